// Selective scan forward: the dispatcher (tile sizes and split from the problem size, the segmented
// launch's workspace).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "ops/cuda/scan_fwd_kernel.cuh"

namespace mamba::cuda {

// scan_fwd_lanes.cu
template <typename input_t>
void launch_scan_fwd_lanes(const ScanParams& p, cudaStream_t stream);
bool scan_fwd_lanes_aligned(const ScanParams& p);

namespace {

int sm_count() {
  static const int count = [] {
    int dev = 0, n = 0;
    MAMBA_CUDA_CHECK(cudaGetDevice(&dev));
    MAMBA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}

struct FwdPlan {
  bool lanes = false;  // the one-state-per-lane kernel (scan_fwd_lanes.cu); the fields below then unused
  int kC = 1;        // channels per thread
  int kG = 4;        // states per thread and channel
  int nsplit = 1;    // threads per channel group
  int segments = 1;  // S
  int64_t seg_len = 0;
};

// The compiled splits (launch_scan_fwd_dtype): channels per thread, states per thread, threads per group.
constexpr int kFwdSplits[][3] = {{1, 1, 1},  {1, 1, 16}, {1, 2, 8},  {1, 4, 1}, {1, 4, 4},
                                 {1, 4, 16}, {1, 8, 2},  {1, 16, 1}, {1, 16, 4}, {1, 16, 16},
                                 {2, 2, 8},  {2, 4, 4},  {2, 8, 2},  {4, 2, 8}, {4, 4, 4}};

// Threads per channel group for kC channels and kG states per thread: the fewest of the compiled splits
// that hold N states, or 0 when none does.
int nsplit_for(int N, int kC, int kG) {
  for (const auto& s : kFwdSplits) {
    if (s[0] == kC && s[1] == kG && s[1] * s[2] >= N) return s[2];
  }
  return 0;
}

// The blocked kernel's split, from the measurements in dev/notes/scan.md (H200).
FwdPlan plan_blocked(const ScanParams& p, ScanTuning tuning) {
  const int N = p.dstate;
  const int64_t channels = static_cast<int64_t>(p.batch) * p.dim;
  const int64_t sms = sm_count();
  FwdPlan plan;
  plan.kC = tuning.channels_per_thread == 0 ? 1 : tuning.channels_per_thread;
  plan.kG = tuning.states_per_thread;
  if (plan.kG == 0) {
    plan.kG = N == 1 ? 1 : N <= 64 ? 4 : 16;
    // 8 states per thread at N ≤ 16 when there are channels enough (or L is cut into segments, which
    // then fill the GPU anyway): fewer shared-memory loads and partial sums per state.
    const bool few = channels * nsplit_for(N, plan.kC, 4) / plan.kC < sms * 128;
    const int64_t threads8 = channels * nsplit_for(N, plan.kC, 8) / plan.kC;
    if (N > 4 && N <= 16 && threads8 > 0 && (few || threads8 >= sms * 384)) plan.kG = 8;
  }
  plan.nsplit = nsplit_for(N, plan.kC, plan.kG);
  if (plan.nsplit == 0) {
    throw std::invalid_argument("selective_scan_fwd: no compiled split holds N = " + std::to_string(N) + " with " +
                                std::to_string(plan.kG) + " states and " + std::to_string(plan.kC) +
                                " channels per thread");
  }
  plan.segments = tuning.segments;
  if (plan.segments == 0) {
    // Two passes cost the exponentials twice, but one pass over a few long sequences leaves most of
    // the GPU idle: then aim at ~1500 threads per SM, where the measured time stops improving.
    // Up to twice that for segments of 2048 steps or fewer: with more blocks the launch's first and last
    // waves (pass 1 alone, full scans alone) are a smaller share of it (measured: 1% faster at 1×262144
    // with 128 segments than with 66).
    // Each segment's full scan waits for its predecessor's end state, a hand-off of a few µs on one
    // chain: time ≈ a·S + w/S, best near S = √(w/a), which grows as √L. So short sequences are cut into
    // fewer, longer segments than the fill count: at most max(√(L/32), L/1024) (16 at L = 8192, 8 at
    // 2048; the long sequences the fill count was measured at, 64K and 256K steps, keep it; the sweeps
    // are in dev/notes/gpu-model.md). Where that cap binds hard the segments no longer fill the GPU, so
    // 8 states per thread (chosen for few channels because segments would fill it) go back to 4, for
    // twice the threads.
    int64_t threads = channels * plan.nsplit / plan.kC;
    if (threads < sms * 128) {
      const int64_t L = p.seqlen;
      const int64_t cap = std::max<int64_t>(
          {1, static_cast<int64_t>(std::sqrt(static_cast<double>(L) / 32.0)), L / 1024});
      int64_t fill = (sms * 1536 + threads - 1) / threads;
      if (tuning.states_per_thread == 0 && plan.kG == 8 && 2 * cap <= fill && nsplit_for(N, plan.kC, 4) > 0) {
        plan.kG = 4;
        plan.nsplit = nsplit_for(N, plan.kC, 4);
        threads = channels * plan.nsplit / plan.kC;
        fill = (sms * 1536 + threads - 1) / threads;
      }
      plan.segments = static_cast<int>(std::min(cap, std::clamp<int64_t>((L + 2047) / 2048, fill, 2 * fill)));
    } else {
      plan.segments = 1;
    }
  }
  const int64_t L = p.seqlen;
  const int64_t per = (L + plan.segments - 1) / plan.segments;
  plan.seg_len = (per + kStateChunk - 1) / kStateChunk * kStateChunk;
  plan.segments = static_cast<int>((L + plan.seg_len - 1) / plan.seg_len);
  return plan;
}

// The kernel and its split. The one-state-per-lane kernel at N = 16 where the blocked split would cut L
// into segments (every exponential twice) and B·D·N/32 warps are at most 1.25 per SM, so that the
// segments would be many and short (dev/notes/scan.md, v12: 1.1–4.3× faster at 64–320 channels,
// slower from 384 on), and where its rows are aligned for its asynchronous copies (without them it
// waits on memory); or when asked for.
FwdPlan plan_fwd(const ScanParams& p, ScanTuning tuning) {
  if (tuning.states_per_thread < 0 || tuning.segments < 0 || tuning.channels_per_thread < 0) {
    throw std::invalid_argument(
        "selective_scan_fwd: channels_per_thread, states_per_thread and segments must be ≥ 0 (0: the "
        "dispatcher's choice)");
  }
  if (tuning.one_state_per_lane < -1 || tuning.one_state_per_lane > 1) {
    throw std::invalid_argument("selective_scan_fwd: one_state_per_lane must be -1, 0 or 1");
  }
  if (tuning.vector_rows < -1 || tuning.vector_rows > 0) {
    throw std::invalid_argument("selective_scan_fwd: vector_rows must be -1 or 0");
  }
  const bool blocked_fields =
      tuning.states_per_thread || tuning.segments || tuning.channels_per_thread || tuning.vector_rows;
  FwdPlan lanes;
  lanes.lanes = true;
  if (tuning.one_state_per_lane == 1) {
    if (p.dstate != 16) throw std::invalid_argument("selective_scan_fwd: one_state_per_lane needs N = 16");
    if (blocked_fields) {
      throw std::invalid_argument("selective_scan_fwd: one_state_per_lane excludes the blocked split's fields");
    }
    return lanes;
  }
  const FwdPlan blocked = plan_blocked(p, tuning);
  if (tuning.one_state_per_lane == -1 || blocked_fields || p.dstate != 16 || blocked.segments == 1) return blocked;
  const int64_t warps = static_cast<int64_t>(p.batch) * p.dim * p.dstate / 32;
  return 4 * warps <= 5 * sm_count() && scan_fwd_lanes_aligned(p) ? lanes : blocked;
}

// Whether the blocked kernel may move every row in 16-byte vectors (ScanFwdTraits::kAligned); the
// workspace too, where L is cut (seg_delta's rows are D floats, 16-byte aligned when D's elements are).
bool rows_vectorize(const ScanParams& p, const FwdPlan& plan, const void* workspace, ScanTuning tuning) {
  const int64_t esize = p.dtype == DType::F32 ? 4 : 2;
  auto ok = [&](const void* ptr, int64_t stride) { return rows_aligned16(ptr, stride, esize); };
  return tuning.vector_rows == 0 && p.dim * esize % 16 == 0 && p.dstate * esize % 16 == 0 &&
         plan.kG * plan.nsplit == p.dstate && ok(p.u, p.u_stride) && ok(p.delta, p.delta_stride) &&
         ok(p.y, p.y_stride) && (!p.z || ok(p.z, p.z_stride)) && ok(p.Bm, p.B_stride) && ok(p.Cm, p.C_stride) &&
         (plan.segments == 1 || reinterpret_cast<uintptr_t>(workspace) % 16 == 0);
}

void validate(const ScanParams& p) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("selective_scan_fwd: " + what); };
  if (p.batch < 0 || p.seqlen < 0 || p.dim < 0 || p.dstate < 1 || p.dstate > 256) fail("bad dimensions");
  if (p.batch > 65535) fail("batch above 65535");
  if (!p.y || !p.u || !p.delta || !p.A || !p.Bm || !p.Cm) fail("y, u, delta, A, B and C are required");
  if (p.dtype != DType::F32 && p.dtype != DType::BF16 && p.dtype != DType::F16) fail("dtype must be f32, bf16 or f16");
  if (p.bc_per_channel) fail("the LTI form (bc_per_channel) runs on the CPU only");
  if (p.chunk_states && p.state_chunk != 0 && p.state_chunk != kStateChunk) {
    fail("chunk_states every " + std::to_string(p.state_chunk) + " steps: the CUDA scan keeps them every " +
         std::to_string(kStateChunk));
  }
}

// The segmented launch's workspace: seg_state, seg_carry (B, S, D, N), seg_dsum (B, S, D), seg_delta
// (B, L, D) floats, then seg_ready, carry_ready (B, S, tiles) and the ticket as ints (room for D tiles: a
// split's tile count is not known here).
struct FwdWorkspace {
  int64_t state, dsum, delta, flags;  // element counts
  size_t bytes() const { return sizeof(float) * (2 * state + dsum + delta) + sizeof(int) * (2 * flags + 1); }
};
FwdWorkspace fwd_workspace(const ScanParams& p, const FwdPlan& plan) {
  const int64_t bs = static_cast<int64_t>(p.batch) * plan.segments;
  return {bs * p.dim * p.dstate, bs * p.dim, static_cast<int64_t>(p.batch) * p.seqlen * p.dim, bs * p.dim};
}

}  // namespace

size_t selective_scan_fwd_workspace(const ScanParams& p, ScanTuning tuning) {
  if (p.batch == 0 || p.seqlen == 0 || p.dim == 0) return 0;
  const FwdPlan plan = plan_fwd(p, tuning);
  if (plan.lanes || plan.segments == 1) return 0;
  return fwd_workspace(p, plan).bytes();
}

void selective_scan_fwd(const ScanParams& p, void* workspace, cudaStream_t stream, ScanTuning tuning) {
  validate(p);
  if (p.batch == 0 || p.dim == 0) return;
  if (p.seqlen == 0) {
    if (p.state_out && p.state_out != p.state_in) {
      const size_t bytes = sizeof(float) * static_cast<size_t>(p.batch) * p.dim * p.dstate;
      if (p.state_in) MAMBA_CUDA_CHECK(cudaMemcpyAsync(p.state_out, p.state_in, bytes, cudaMemcpyDeviceToDevice, stream));
      else MAMBA_CUDA_CHECK(cudaMemsetAsync(p.state_out, 0, bytes, stream));
    }
    return;
  }
  const FwdPlan plan = plan_fwd(p, tuning);
  if (plan.lanes) {
    switch (p.dtype) {
      case DType::F32: launch_scan_fwd_lanes<float>(p, stream); break;
      case DType::BF16: launch_scan_fwd_lanes<__nv_bfloat16>(p, stream); break;
      case DType::F16: launch_scan_fwd_lanes<__half>(p, stream); break;
    }
    return;
  }
  ScanFwdKernelParams kp;
  kp.p = p;
  kp.segments = plan.segments;
  kp.seg_len = plan.seg_len;
  kp.sm_count = sm_count();
  if (plan.segments > 1) {
    if (!workspace) throw std::invalid_argument("selective_scan_fwd: workspace required (selective_scan_fwd_workspace)");
    const FwdWorkspace ws = fwd_workspace(p, plan);
    kp.seg_state = static_cast<float*>(workspace);
    kp.seg_carry = kp.seg_state + ws.state;
    kp.seg_dsum = kp.seg_carry + ws.state;
    kp.seg_delta = kp.seg_dsum + ws.dsum;
    kp.seg_ready = reinterpret_cast<int*>(kp.seg_delta + ws.delta);
    kp.carry_ready = kp.seg_ready + ws.flags;
    kp.ticket = kp.carry_ready + ws.flags;
    MAMBA_CUDA_CHECK(cudaMemsetAsync(kp.seg_ready, 0, sizeof(int) * (2 * ws.flags + 1), stream));
  }
  const bool vec = rows_vectorize(p, plan, workspace, tuning);
  switch (p.dtype) {
    case DType::F32: launch_scan_fwd_dtype<float>(kp, plan.kC, plan.kG, plan.nsplit, vec, stream); break;
    case DType::BF16: launch_scan_fwd_dtype<__nv_bfloat16>(kp, plan.kC, plan.kG, plan.nsplit, vec, stream); break;
    case DType::F16: launch_scan_fwd_dtype<__half>(kp, plan.kC, plan.kG, plan.nsplit, vec, stream); break;
  }
}

}  // namespace mamba::cuda
