#include "dist/comm.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace mamba {

namespace {

// An environment variable as an integer in [lo, hi]; -1 when unset.
int env_int(const char* name, int lo, int hi) {
  const char* text = std::getenv(name);
  if (!text || !*text) return -1;
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (errno || *end || v < lo || v > hi) fail("the environment variable ", name, "=", text, " must be an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

LaunchInfo from(const char* rank, const char* size, const char* local, const char* launcher) {
  LaunchInfo info;
  info.size = env_int(size, 1, INT_MAX);
  info.rank = env_int(rank, 0, info.size - 1);
  if (info.rank < 0) fail("the environment sets ", size, " but not ", rank);
  info.local_rank = local ? env_int(local, 0, INT_MAX) : -1;
  if (info.local_rank < 0) info.local_rank = info.rank;  // one host
  info.launcher = launcher;
  return info;
}

}  // namespace

LaunchInfo detect_launch() {
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    return from("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "mpi");
  }
  if (std::getenv("PMI_SIZE")) return from("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "mpi");
  if (std::getenv("WORLD_SIZE")) return from("RANK", "WORLD_SIZE", "LOCAL_RANK", "env");
  return {};
}

bool launched_as_several() {
  try {
    return detect_launch().size > 1;
  } catch (const Error&) {
    return false;
  }
}

void abort_job(int code) {
#ifdef MAMBA_HAVE_MPI
  dist_detail::mpi_abort_if_running(code);
#endif
  std::_Exit(code);
}

std::string transports() {
  std::string t;
#ifdef MAMBA_HAVE_MPI
  t += "mpi";
#endif
#ifdef MAMBA_HAVE_NCCL
  t += t.empty() ? "nccl" : ", nccl";
#endif
  return t.empty() ? "none" : t;
}

void dist_detail::report(int rank, const std::string& message) {
  const std::string line = "rank " + std::to_string(rank) + ": " + message + "\n";
  // One write: lines of different ranks do not interleave on a shared terminal.
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

Watchdog::Watchdog(double timeout_s, std::function<void(const std::string&, double)> on_timeout)
    : timeout_s_(timeout_s), on_timeout_(std::move(on_timeout)) {
  if (timeout_s_ > 0) thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::arm(std::string what) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_.push_back({std::move(what), std::chrono::steady_clock::now()});
  }
  cv_.notify_all();
}

void Watchdog::disarm() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!armed_.empty()) armed_.pop_back();
  }
  cv_.notify_all();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s_));
  while (!quit_) {
    if (armed_.empty()) {
      cv_.wait(lock);
      continue;
    }
    // The innermost armed work; woken when it changes (armed, disarmed) or when its time is up.
    const size_t depth = armed_.size();
    const auto since = armed_.back().since;
    if (cv_.wait_until(lock, since + limit,
                       [&] { return quit_ || armed_.size() != depth || armed_.back().since != since; })) {
      continue;
    }
    const std::string what = armed_.back().what;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
    lock.unlock();
    on_timeout_(what, seconds);  // does not return
    lock.lock();
  }
}

std::unique_ptr<Communicator> connect(Backend& backend, const LaunchInfo& launch, const DistOptions& options) {
  if (!(options.timeout_s > 0)) fail("data-parallel training: the timeout ", options.timeout_s, " s must be positive");
  if (options.bucket_bytes < 4) fail("data-parallel training: buckets of ", options.bucket_bytes, " bytes are too small");
  if (backend.host_memory()) {
    if (launch.size == 1) return nullptr;
    if (launch.launcher != "mpi") {
      fail("data-parallel training on the CPU runs over MPI: start the ranks with mpirun (this process was started "
           "with RANK / WORLD_SIZE, as rank ", launch.rank, " of ", launch.size, ")");
    }
#ifdef MAMBA_HAVE_MPI
    return dist_detail::connect_mpi(launch, options);
#else
    fail("this build has no MPI (install libopenmpi-dev and rebuild): it cannot train as rank ", launch.rank, " of ",
         launch.size);
#endif
  }
#ifdef MAMBA_HAVE_NCCL
  // On a GPU the NCCL path runs even for a world of one when launched as a job (its overhead is measured so).
  if (launch.launcher.empty()) return nullptr;
  return dist_detail::connect_nccl(backend, launch, options);
#else
  if (launch.size == 1) return nullptr;
  fail("this build has no NCCL: it cannot train on ", backend.describe(), " as rank ", launch.rank, " of ", launch.size);
#endif
}

}  // namespace mamba
