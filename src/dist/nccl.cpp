// The NCCL transport (dist/comm.h) for a GPU backend. Collectives run on a stream of their own: a bucket's
// all-reduce waits (by an event) for the backward work queued before it and runs while later layers
// compute; wait() makes the backend's stream wait for the reductions, so the host never blocks on them. The
// communicator is blocking NCCL's, which ncclCommAbort from the watchdog's thread ends when a rank hangs.
// NCCL's unique id comes from rank 0 by MPI_Bcast when MPI started the job, else through a rendezvous file.
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "dist/comm.h"

namespace mamba {

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(what, ": ", cudaGetErrorString(err));
}

void check_nccl(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) fail(what, ": ", ncclGetErrorString(rc), " (NCCL_DEBUG=WARN says more)");
}

ncclUniqueId exchange_id(const LaunchInfo& launch, const DistOptions& options) {
  ncclUniqueId id{};
  if (launch.rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
#ifdef MAMBA_HAVE_MPI
  if (launch.launcher == "mpi") {
    dist_detail::mpi_broadcast(&id, sizeof(id), launch);
    return id;
  }
#endif
  const std::filesystem::path& file = options.rendezvous;
  if (file.empty()) {
    fail("training on GPUs as rank ", launch.rank, " of ", launch.size,
         " without MPI: give a rendezvous file on a filesystem every rank reaches (--rendezvous FILE), or start "
         "the ranks with mpirun");
  }
  if (launch.rank == 0) {
    if (std::filesystem::exists(file)) {
      fail("rendezvous file ", file.string(), " exists already (from an earlier job?): remove it or give a new path");
    }
    const std::filesystem::path tmp = file.string() + ".tmp" + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::binary);
      out.write(reinterpret_cast<const char*>(&id), sizeof(id));
      if (!out) fail("cannot write the rendezvous file ", tmp.string());
    }
    std::filesystem::rename(tmp, file);  // whole or absent for the readers
    return id;
  }
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    std::error_code ec;
    if (std::filesystem::file_size(file, ec) == sizeof(id) && !ec) {
      std::ifstream in(file, std::ios::binary);
      in.read(reinterpret_cast<char*>(&id), sizeof(id));
      if (in) return id;
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > options.timeout_s) {
      fail("rank ", launch.rank, ": rank 0 wrote no rendezvous file ", file.string(), " within ", options.timeout_s, " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Backend& backend, const LaunchInfo& launch, const DistOptions& options)
      : Communicator(launch.rank, launch.size), backend_(backend) {
    compute_ = static_cast<cudaStream_t>(backend.native_stream());
    if (!compute_) fail("NCCL needs a GPU backend, not ", backend.describe());
    check_cuda(cudaSetDevice(backend.device().index), "cudaSetDevice");
    watchdog_ = std::make_unique<Watchdog>(options.timeout_s, [this](const std::string& what, double seconds) {
      abort("no progress in " + what + " for " + std::to_string(static_cast<int>(seconds)) +
            " s: another rank died or hangs; stopping the job");
    });
    const ncclUniqueId id = exchange_id(launch, options);
    {
      Watchdog::Scope watch(watchdog(), "NCCL's start (every rank must join)");
      check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    }
    if (rank_ == 0 && !options.rendezvous.empty() && launch.launcher != "mpi") {
      std::error_code ec;
      std::filesystem::remove(options.rendezvous, ec);  // every rank has joined: the id is spent
    }
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaMalloc(&staging_, sizeof(double) * kStaging), "cudaMalloc");
  }

  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
    if (staging_) cudaFree(staging_);
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string describe() const override {
    int version = 0;
    ncclGetVersion(&version);
    return "NCCL " + std::to_string(version) + ", rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
           " on " + backend_.describe();
  }

  void all_reduce_sum(float* data, int64_t n) override {
    after_compute();
    check_nccl(ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    pending_ = true;
  }

  void wait() override {
    if (!pending_) return;
    before_compute();
    pending_ = false;
  }

  void all_gather(float* data, int64_t count) override {
    after_compute();
    check_nccl(ncclAllGather(data + static_cast<size_t>(rank_) * count, data, static_cast<size_t>(count), ncclFloat,
                             comm_, stream_),
               "ncclAllGather");
    before_compute();
  }

  void all_reduce_host(double* data, int n) override {
    Watchdog::Scope watch(watchdog(), "an all-reduce of " + std::to_string(n) + " values");
    for (int o = 0; o < n; o += kStaging) {
      const int k = std::min(kStaging, n - o);
      after_compute();
      check_cuda(cudaMemcpyAsync(staging_, data + o, sizeof(double) * k, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
      check_nccl(ncclAllReduce(staging_, staging_, static_cast<size_t>(k), ncclDouble, ncclSum, comm_, stream_),
                 "ncclAllReduce");
      check_cuda(cudaMemcpyAsync(data + o, staging_, sizeof(double) * k, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
      check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }
  }

  [[noreturn]] void abort(const std::string& message) override {
    dist_detail::report(rank_, message);
    if (comm_) ncclCommAbort(comm_);  // ends the other threads' waits in NCCL; the other ranks' watchdogs end theirs
    std::_Exit(2);
  }

 private:
  static constexpr int kStaging = 64;

  // The collective stream waits for the work queued on the backend's stream so far.
  void after_compute() {
    check_cuda(cudaEventRecord(ready_, compute_), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }
  // The backend's stream waits for the collectives queued so far.
  void before_compute() {
    check_cuda(cudaEventRecord(done_, stream_), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(compute_, done_, 0), "cudaStreamWaitEvent");
  }

  Backend& backend_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t compute_ = nullptr, stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  double* staging_ = nullptr;
  bool pending_ = false;
};

}  // namespace

std::unique_ptr<Communicator> dist_detail::connect_nccl(Backend& backend, const LaunchInfo& launch,
                                                        const DistOptions& options) {
  return std::make_unique<NcclCommunicator>(backend, launch, options);
}

}  // namespace mamba
