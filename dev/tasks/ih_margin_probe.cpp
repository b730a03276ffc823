// How does an induction-heads answer's margin wear with the distance between trigger and query, per
// target token? The filler of one test sequence (seed 1234, as tasks eval), the trigger at position P
// followed by each of the 15 possible targets (a batch of 15), and the query asked at distances 2^k
// after the trigger (the state branched, one trigger token stepped). A diagnostic, not part of the build:
//   g++ -O2 -std=c++20 -march=native -fopenmp -I src dev/tasks/ih_margin_probe.cpp build/libmamba.a \
//       -lopenblas -o ih_margin_probe
//   ./ih_margin_probe MODEL_DIR TEST_LENGTH SEQUENCE P MAX_DISTANCE [SEED]
// SEED (default 1234, the test sets' seed) picks the filler from another set, e.g. to choose between
// checkpoints without looking at the test sequences.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "model/engine.h"
#include "model/model.h"
#include "model/state.h"
#include "model/tasks.h"

using namespace mamba;

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TEST_LENGTH SEQUENCE P MAX_DISTANCE [SEED]\n", argv[0]);
    return 2;
  }
  const Model model = Model::load(argv[1]);
  TaskSpec spec;
  spec.kind = TaskKind::InductionHeads;
  spec.length = std::atoll(argv[2]);
  const uint64_t seed = argc > 6 ? std::strtoull(argv[6], nullptr, 10) : 1234;
  const TaskSequence base = test_set(spec, 16, seed)[static_cast<size_t>(std::atoi(argv[3]))];
  const int64_t P = std::atoll(argv[4]), max_d = std::atoll(argv[5]);
  const int B = 16, V = model.config().vocab_size, chunk = 4096;
  spec.length = P + max_d + 2;  // long enough that sequence_tokens never places the query inside
  TaskSequence seq = base;
  seq.positions = {P};
  std::vector<int64_t> marks;
  for (int64_t d = 256; d <= max_d; d *= 2) marks.push_back(P + 1 + d);
  Engine engine(model, int64_t{B} * chunk);
  State state(model.config(), B);
  std::vector<int32_t> tokens(static_cast<size_t>(B) * chunk), one(B, 15);
  std::vector<float> logits(static_cast<size_t>(B) * V);
  std::printf("%10s", "distance");
  for (int b = 0; b < 15; b++) std::printf(" %6d", b);
  std::printf("   (row 2: the state minus the filler-only state's drift since the first mark)\n");
  State first;
  int64_t t = 0;
  for (int64_t mark : marks) {
    while (t < mark) {
      const int n = static_cast<int>(std::min<int64_t>(chunk, mark - t));
      for (int b = 0; b < B; b++) {
        seq.data = {b % 15};
        seq.positions = {b < 15 ? P : spec.length + 10};  // the last sequence: filler only
        sequence_tokens(spec, seq, t, n, tokens.data() + int64_t{b} * n);
      }
      engine.forward(tokens.data(), B, n, state, nullptr, Logits::None);
      t += n;
    }
    if (first.batch == 0) first = state;
    const std::vector<float> state_ssm = state.ssm(), first_ssm = first.ssm();
    for (int surgery = 0; surgery < 2; surgery++) {
      State branch = state;
      if (surgery) {
        // Per layer and channel: h_b − h_filler + h_filler(first mark), keeping what the trigger wrote.
        const int64_t per = int64_t{state.d_inner} * state.d_state;
        for (int l = 0; l < state.n_layer; l++) {
          float* h = branch.ssm_layer(l);
          const float* now = state_ssm.data() + int64_t{l} * B * per;
          const float* then = first_ssm.data() + int64_t{l} * B * per;
          for (int b = 0; b < 15; b++) {
            for (int64_t i = 0; i < per; i++) h[b * per + i] = now[b * per + i] - now[15 * per + i] + then[15 * per + i];
          }
        }
      }
      engine.forward(one.data(), B, 1, branch, logits.data(), Logits::All);
      std::printf("%10lld", static_cast<long long>(mark - P - 1));
      for (int b = 0; b < 15; b++) {
        const float* row = logits.data() + int64_t{b} * V;
        float other = -std::numeric_limits<float>::infinity();
        for (int v = 0; v < V; v++) other = v == b ? other : std::max(other, row[v]);
        std::printf(" %6.1f", row[b] - other);
      }
      std::printf(surgery ? "  surgery\n" : "\n");
    }
    // What the trigger wrote, h_b − h_filler, against the same at the first mark: the projection's
    // ratio (decay) and the part orthogonal to it (new content), per layer, for a few targets.
    const int64_t per = int64_t{state.d_inner} * state.d_state;
    for (int l = 0; l < state.n_layer; l++) {
      std::printf("%10s layer %d:", "", l);
      for (int b : {0, 1, 8, 10, 12}) {
        const float* now = state_ssm.data() + int64_t{l} * B * per;
        const float* then = first_ssm.data() + int64_t{l} * B * per;
        double dot = 0, nn = 0, tt = 0;
        for (int64_t i = 0; i < per; i++) {
          const double m = now[b * per + i] - now[15 * per + i], m0 = then[b * per + i] - then[15 * per + i];
          dot += m * m0, nn += m * m, tt += m0 * m0;
        }
        const double ratio = dot / tt, orth = std::sqrt(std::max(0.0, nn - dot * dot / tt) / tt);
        std::printf("  t%-2d |M0| %7.2f proj %.4f orth %.4f", b, std::sqrt(tt), ratio, orth);
      }
      std::printf("\n");
    }
    std::fflush(stdout);
  }
}
