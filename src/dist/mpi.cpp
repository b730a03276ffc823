// The MPI transport (dist/comm.h) for the CPU backend: gradients summed with non-blocking all-reduces
// (MPI_Iallreduce, in place), advanced by MPI_Testall between layers, the parameters' slices gathered with
// MPI_Allgather in place. MPI is initialised once per process, with MPI_THREAD_MULTIPLE when the library
// offers it (the watchdog's thread may then call MPI_Abort while the main thread waits inside MPI).
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"

namespace mamba {

namespace {

int g_thread_level = MPI_THREAD_SINGLE;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void init_once() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&g_thread_level);
    return;
  }
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &g_thread_level) != MPI_SUCCESS) {
    fail("MPI_Init_thread failed");
  }
  std::atexit(finalize_at_exit);
}

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail(what, ": ", std::string(text, static_cast<size_t>(len)));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int rank, int size, const DistOptions& options) : Communicator(rank, size) {
    // Errors come back as codes (turned into messages naming the call) rather than killing the job silently.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    watchdog_ = std::make_unique<Watchdog>(options.timeout_s, [this](const std::string& what, double seconds) {
      abort("no progress in " + what + " for " + std::to_string(static_cast<int>(seconds)) +
            " s: another rank died or hangs; stopping the job");
    });
  }

  std::string describe() const override {
    return "MPI, rank " + std::to_string(rank_) + " of " + std::to_string(size_);
  }

  void all_reduce_sum(float* data, int64_t n) override {
    // MPI counts are ints: pieces of at most 2^30 floats.
    for (int64_t o = 0; o < n; o += kPiece) {
      MPI_Request r;
      check(MPI_Iallreduce(MPI_IN_PLACE, data + o, static_cast<int>(std::min(kPiece, n - o)), MPI_FLOAT, MPI_SUM,
                           MPI_COMM_WORLD, &r),
            "MPI_Iallreduce");
      pending_.push_back(r);
    }
  }

  void progress() override {
    if (pending_.empty()) return;
    int done = 0;
    check(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) pending_.clear();
  }

  void wait() override {
    if (pending_.empty()) return;
    Watchdog::Scope watch(watchdog(), "the gradients' all-reduce");
    check(MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    pending_.clear();
  }

  void all_gather(float* data, int64_t count) override {
    if (count > INT_MAX) fail("all-gather of ", count, " floats per rank: more than MPI's int count");
    Watchdog::Scope watch(watchdog(), "the parameters' all-gather");
    check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, static_cast<int>(count), MPI_FLOAT, MPI_COMM_WORLD),
          "MPI_Allgather");
  }

  void all_reduce_host(double* data, int n) override {
    Watchdog::Scope watch(watchdog(), "an all-reduce of " + std::to_string(n) + " values");
    check(MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  }

  [[noreturn]] void abort(const std::string& message) override {
    dist_detail::report(rank_, message);
    // MPI_Abort from this thread is allowed only with MPI_THREAD_MULTIPLE (the main thread may be inside MPI);
    // otherwise this rank exits, and the launcher stops the others when one exits with an error.
    if (g_thread_level == MPI_THREAD_MULTIPLE || std::this_thread::get_id() == main_thread_) MPI_Abort(MPI_COMM_WORLD, 2);
    std::_Exit(2);
  }

 private:
  static constexpr int64_t kPiece = int64_t{1} << 30;
  std::vector<MPI_Request> pending_;
  std::thread::id main_thread_ = std::this_thread::get_id();
};

}  // namespace

void dist_detail::mpi_abort_if_running(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

void dist_detail::mpi_broadcast(void* data, size_t bytes, const LaunchInfo& launch) {
  init_once();
  if (bytes > INT_MAX) fail("MPI broadcast of ", bytes, " bytes");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != launch.rank) fail("MPI says rank ", rank, " but the environment said ", launch.rank);
  check(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
}

std::unique_ptr<Communicator> dist_detail::connect_mpi(const LaunchInfo& launch, const DistOptions& options) {
  init_once();
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank != launch.rank || size != launch.size) {
    fail("MPI says rank ", rank, " of ", size, " but the environment said ", launch.rank, " of ", launch.size);
  }
  return std::make_unique<MpiCommunicator>(rank, size, options);
}

}  // namespace mamba
