// Kept sessions: a request that names a `session` continues it, and the session's recurrent state is
// kept after the reply, so the next request sends only its new text. A Mamba sequence's whole context
// is its state (fixed in size: 2.7 MiB for the 130m model, docs/server.md has the table), so a
// conversation of any length costs that much to keep.
//
// Memory is bounded: past `budget` bytes the least recently used sessions leave memory, to a state
// file each in `dir` when one is given (Session::save; loaded back on their next request), else they
// are forgotten. At most one request holds a session at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mamba/mamba.h"

namespace mamba::server {

class SessionStore {
 public:
  SessionStore(api::Model model, int64_t budget, std::filesystem::path dir);

  // Takes session `id` for one request: the kept session, from memory or from its file, or nullopt
  // when there is none yet (the request starts it). ApiError 409 while another request holds it.
  std::optional<api::Session> acquire(const std::string& id);
  // Gives it back after the request: kept as the most recently used.
  void release(const std::string& id, api::Session session);
  // The request held a session it had started and that is not to be kept.
  void abandon(const std::string& id);
  // Forgets it, in memory and on disk: false when there is no such session. 409 while held.
  bool erase(const std::string& id);
  // Every session in memory to its file (at shutdown), when there is a folder.
  void flush();

  struct Info {
    std::string id;
    bool in_memory = false, held = false;
  };
  std::vector<Info> list() const;
  int64_t bytes() const;       // of the sessions in memory
  int64_t count() const;       // in memory
  int64_t session_bytes() const { return per_session_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path file(const std::string& id) const { return dir_ / (id + ".safetensors"); }
  void evict_locked();

  api::Model model_;
  int64_t budget_, per_session_;
  std::filesystem::path dir_;
  mutable std::mutex mutex_;
  std::list<std::pair<std::string, api::Session>> lru_;  // in memory, most recently used first
  std::map<std::string, std::list<std::pair<std::string, api::Session>>::iterator> index_;
  std::set<std::string> held_;  // ids a request holds
};

}  // namespace mamba::server
