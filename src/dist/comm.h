// Data-parallel training's collectives, one interface for every transport: MPI over host memory (the CPU
// backend), NCCL over a GPU's memory, and a world of one process. The trainer is written once against it
// (model/trainer.h): each rank computes a shard of every global batch, the gradients are summed over the
// ranks in buckets while the backward still runs, each rank updates its slice of the parameters (ZeRO-1)
// and the slices are gathered.
//
// Which process of how many this is comes from the launcher's environment (detect_launch):
//   mpirun (OpenMPI): OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK;
//   MPICH / Hydra, Slurm's PMI: PMI_RANK, PMI_SIZE (and MPI_LOCALRANKID);
//   torchrun and other launchers: RANK, WORLD_SIZE, LOCAL_RANK.
// On the CPU the job must be started by an MPI launcher. On GPUs started without MPI, the ranks meet
// through a rendezvous file on a filesystem they share (DistOptions::rendezvous): rank 0 writes NCCL's
// unique id there, the others read it.
//
// Failure: every collective and every training step runs under a watchdog. When one does not finish
// within DistOptions::timeout_s (a rank died or hangs), this rank prints which and stops the job (MPI_Abort,
// or ncclCommAbort and exit), never a silent hang; checkpoints are written atomically by rank 0, so the last
// one stays loadable.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ops/backend.h"

namespace mamba {

struct LaunchInfo {
  int rank = 0, size = 1, local_rank = 0;
  std::string launcher;  // "mpi", "env" (RANK / WORLD_SIZE), or "" (one process)
};

// The launch as the environment describes it; fails naming the variable when one is malformed (a rank
// outside [0, size), a size below 1).
LaunchInfo detect_launch();

struct DistOptions {
  double timeout_s = 600;               // a collective or a step not done in this long stops the job
  std::filesystem::path rendezvous;     // NCCL without MPI: a file every rank can reach
  int64_t bucket_bytes = 25 << 20;      // gradients reduced in buckets of about this many bytes
};

// Stops the job when armed work outlasts the timeout. One thread, woken when armed and when disarmed.
class Watchdog {
 public:
  // on_timeout(what, seconds) is called from the watchdog's thread and must not return (it stops the job).
  Watchdog(double timeout_s, std::function<void(const std::string& what, double seconds)> on_timeout);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Starts the clock for `what`; arms nest (a step, then a collective inside it): disarm() goes back to the
  // enclosing one and its clock.
  void arm(std::string what);
  void disarm();
  double timeout_s() const { return timeout_s_; }

  // Arms for the scope's lifetime.
  class Scope {
   public:
    Scope(Watchdog* w, std::string what) : w_(w) {
      if (w_) w_->arm(std::move(what));
    }
    ~Scope() {
      if (w_) w_->disarm();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Watchdog* w_;
  };

 private:
  void loop();

  double timeout_s_;
  std::function<void(const std::string&, double)> on_timeout_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool quit_ = false;
  struct Armed {
    std::string what;
    std::chrono::steady_clock::time_point since;
  };
  std::vector<Armed> armed_;  // innermost last
  std::thread thread_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // One line for logs: the transport, the world's size and this rank.
  virtual std::string describe() const = 0;

  // Sums n floats in place over the ranks, in the memory of the backend the communicator was made for.
  // Queued: returns before it completes where the transport allows; wait() completes everything queued, and
  // nothing may touch `data` until then.
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  // Lets queued reductions advance (MPI moves non-blocking collectives only inside its calls). Cheap.
  virtual void progress() {}
  virtual void wait() = 0;
  // In place: data holds size() slices of `count` floats, slice r being rank r's; each rank's slice goes to
  // every rank. Completes before it returns (on a GPU: queued before the next work on the backend's stream).
  virtual void all_gather(float* data, int64_t count) = 0;
  // n doubles in host memory summed over the ranks (losses, counts, flags); waits.
  virtual void all_reduce_host(double* data, int n) = 0;

  // The watchdog of this communicator's collectives; the trainer arms it around each step too.
  Watchdog* watchdog() { return watchdog_.get(); }
  // Stops every rank of the job after a failure on this one (an error, a timeout): prints `message` and
  // does not return.
  [[noreturn]] virtual void abort(const std::string& message) = 0;

 protected:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}
  int rank_, size_;
  std::unique_ptr<Watchdog> watchdog_;
};

// The communicator of the job this process belongs to, for `backend`'s memory: MPI for the CPU, NCCL for a
// GPU; null for a single process (no launcher, or a world of one on the CPU). Fails naming what is missing
// (a build without MPI or NCCL, no rendezvous for NCCL without MPI).
std::unique_ptr<Communicator> connect(Backend& backend, const LaunchInfo& launch, const DistOptions& options);

// For a rank that failed before or outside the communicator: whether this process was started as one of
// several (then an error must stop the whole job, not this rank alone).
bool launched_as_several();
// Stops the whole job after an error on this rank (MPI_Abort when MPI is running; else this process exits
// and the other ranks' watchdogs stop them). Does not return.
[[noreturn]] void abort_job(int code);

// The transports this build has: "mpi", "nccl" (each when built).
std::string transports();

namespace dist_detail {
#ifdef MAMBA_HAVE_MPI
std::unique_ptr<Communicator> connect_mpi(const LaunchInfo& launch, const DistOptions& options);
// Rank 0's bytes to every rank (MPI initialised on first use): NCCL's unique id in a job MPI started.
void mpi_broadcast(void* data, size_t bytes, const LaunchInfo& launch);
// MPI_Abort when MPI is initialised (and not finalised); returns otherwise.
void mpi_abort_if_running(int code);
#endif
#ifdef MAMBA_HAVE_NCCL
std::unique_ptr<Communicator> connect_nccl(Backend& backend, const LaunchInfo& launch, const DistOptions& options);
#endif
// Prints "rank R: message" to stderr (whole lines: ranks share a terminal).
void report(int rank, const std::string& message);
}  // namespace dist_detail

}  // namespace mamba
