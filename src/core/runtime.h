// Process setup that every frontend needs (the CLI, the Python package, the server): thread counts,
// subnormal floats flushed to zero, and OpenMP's wait policy.
#pragma once

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace mamba {

// Subnormal floats (below 2⁻¹²⁶ ≈ 1.2e-38) flushed to zero, as inputs and as results, on the calling
// thread until the end of the scope. A channel whose Δ·A is very negative (a large Δ that overwrites
// its state) decays by exp(Δ·A) ≤ 1.2e-38, and the products that follow are subnormal: x86 cores take
// a microcode assist for each, so a trained induction-heads model ran its training step 3.5× slower
// (measured). Values that small are zero to every output. The scans set it once in each of their
// threads (MXCSR is per thread; writing it serializes), and restore the caller's mode after. A no-op
// where the ISA has no such mode here.
class FlushSubnormals {
 public:
#if defined(__SSE__)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtz | kDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }
#else
  FlushSubnormals() = default;
#endif
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

#if defined(__SSE__)
  static constexpr unsigned kFtz = 0x8000, kDaz = 0x0040;  // MXCSR: flush-to-zero, denormals-are-zero
#endif

 private:
#if defined(__SSE__)
  unsigned saved_;
#endif
};

// Sets the OpenMP and OpenBLAS thread counts (0: every core) and flushes subnormals to zero for good in
// the calling thread and in every OpenMP worker (the pool's threads keep their mode, and threads made
// later inherit it from the thread that makes them), so that every op skips the assists, OpenBLAS's
// too. Call it once, before the work, from the thread that will run it.
void configure_runtime(int threads = 0);
int runtime_threads();

// Products of BF16 weights over many rows (prefill, scoring, training's forward) with the activations
// rounded to bf16, on CPUs that multiply bf16 natively (AVX-512 BF16; ops/cpu/blas.h): about twice the
// speed of the exact path, results within bf16's rounding of it (as the GPU's bf16 products). Off by
// default: every product then takes the activations in fp32, on every CPU alike. Elsewhere a no-op.
void set_bf16_products(bool on);
bool bf16_products();

// OpenMP's idle threads should sleep, not spin: spinning threads take the cores from OpenBLAS and from
// other processes (measured: training 2.5× faster on a busy 2-core machine). libgomp reads
// OMP_WAIT_POLICY once, when it loads, so a program's main() calls this first: when the variable is
// unset it sets PASSIVE and starts the program again (returning only if that fails); a value the user
// set is kept. A library loaded into another process (Python) sets the variable before loading instead.
void relaunch_with_passive_wait(char** argv);

}  // namespace mamba
