#include "server/sessions.h"

#include <system_error>

#include "core/error.h"
#include "server/protocol.h"

namespace mamba::server {

SessionStore::SessionStore(api::Model model, int64_t budget, std::filesystem::path dir)
    : model_(std::move(model)), budget_(budget), dir_(std::move(dir)) {
  const api::ModelConfig& c = model_.config();
  // The state, and beside it the next token's logits (V floats) and the sampler's buffers (a seen flag,
  // a probability and a candidate per token: 9 bytes per token).
  per_session_ = c.state_bytes + int64_t{c.vocab_size} * (4 + 9) + 4096;
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) fail(dir_.string(), ": cannot create the session folder: ", ec.message());
  }
}

std::optional<api::Session> SessionStore::acquire(const std::string& id) {
  std::unique_lock lock(mutex_);
  if (held_.count(id)) throw ApiError(409, "session \"" + id + "\" is in use by another request", "session");
  if (auto it = index_.find(id); it != index_.end()) {
    api::Session s = std::move(it->second->second);
    lru_.erase(it->second);
    index_.erase(it);
    held_.insert(id);
    return s;
  }
  if (!dir_.empty() && std::filesystem::exists(file(id))) {
    held_.insert(id);
    lock.unlock();  // loading takes the model's lock, which a decode step may hold for a while
    try {
      api::Session s = model_.load_session(file(id));
      std::filesystem::remove(file(id));  // memory has the one copy now
      return s;
    } catch (...) {
      std::lock_guard relock(mutex_);
      held_.erase(id);
      throw;
    }
  }
  held_.insert(id);
  return std::nullopt;
}

void SessionStore::release(const std::string& id, api::Session session) {
  std::lock_guard lock(mutex_);
  held_.erase(id);
  lru_.emplace_front(id, std::move(session));
  index_[id] = lru_.begin();
  evict_locked();
}

void SessionStore::abandon(const std::string& id) {
  std::lock_guard lock(mutex_);
  held_.erase(id);
}

bool SessionStore::erase(const std::string& id) {
  std::lock_guard lock(mutex_);
  if (held_.count(id)) throw ApiError(409, "session \"" + id + "\" is in use by a request", "session");
  bool found = false;
  if (auto it = index_.find(id); it != index_.end()) {
    lru_.erase(it->second);
    index_.erase(it);
    found = true;
  }
  if (!dir_.empty()) found = std::filesystem::remove(file(id)) || found;
  return found;
}

void SessionStore::evict_locked() {
  while (!lru_.empty() && static_cast<int64_t>(lru_.size()) * per_session_ > budget_) {
    auto& [id, session] = lru_.back();
    if (!dir_.empty()) session.save(file(id));  // atomic: a crash leaves the old file or the new one
    index_.erase(id);
    lru_.pop_back();
  }
}

void SessionStore::flush() {
  std::lock_guard lock(mutex_);
  if (dir_.empty()) return;
  for (auto& [id, session] : lru_) session.save(file(id));
  lru_.clear();
  index_.clear();
}

std::vector<SessionStore::Info> SessionStore::list() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, Info> all;
  if (!dir_.empty()) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
      const auto name = entry.path().filename();
      if (name.extension() == ".safetensors" && valid_session_id(name.stem().string())) {
        all[name.stem().string()].id = name.stem().string();
      }
    }
  }
  for (const auto& [id, session] : lru_) all[id] = Info{id, true, false};
  for (const std::string& id : held_) all[id] = Info{id, false, true};
  std::vector<Info> out;
  for (auto& [id, info] : all) out.push_back(info);
  return out;
}

int64_t SessionStore::bytes() const { return count() * per_session_; }

int64_t SessionStore::count() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(lru_.size());
}

}  // namespace mamba::server
