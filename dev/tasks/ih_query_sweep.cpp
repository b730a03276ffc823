// Where along an induction-heads test sequence does a model's answer go wrong? The same tokens with the
// query (the trigger's second appearance) moved to position L' − 1, for L' from just after the target to
// the test length: a binary search for the first failing L', then pass/fail around it. Also prints every
// test sequence's target and trigger distance. A diagnostic for docs/results.md, not part of the build:
//   g++ -O2 -std=c++20 -march=native -fopenmp -I src dev/tasks/ih_query_sweep.cpp build/libmamba.a \
//       -lopenblas -o ih_query_sweep
//   ./ih_query_sweep MODEL_DIR LENGTH SEQUENCE...     (test set seed 1234, 16 sequences, as tasks eval)
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "model/model.h"
#include "model/tasks.h"

using namespace mamba;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR LENGTH [SEQUENCE...]\n", argv[0]);
    return 2;
  }
  const Model model = Model::load(argv[1]);
  TaskSpec spec;
  spec.kind = TaskKind::InductionHeads;
  spec.length = std::atoll(argv[2]);
  const std::vector<TaskSequence> set = test_set(spec, 16, 1234);
  for (size_t i = 0; i < set.size(); i++) {
    std::printf("sequence %2zu: target %2d, trigger %lld tokens before the query\n", i, set[i].data[0],
                static_cast<long long>(spec.length - 1 - set[i].positions[0]));
  }
  for (int a = 3; a < argc; a++) {
    const TaskSequence& seq = set[static_cast<size_t>(std::atoi(argv[a]))];
    auto fails = [&](int64_t L) {
      TaskSpec s = spec;
      s.length = L;
      return !evaluate_task(model, s, {seq}, 1, 4096).misses.empty();
    };
    int64_t lo = seq.positions[0] + 3, hi = spec.length;
    if (fails(lo) || !fails(hi)) {
      std::printf("sequence %s: %s at L' = %lld, %s at %lld: nothing to search\n", argv[a], fails(lo) ? "fails" : "ok",
                  static_cast<long long>(lo), fails(hi) ? "fails" : "ok", static_cast<long long>(hi));
      continue;
    }
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      (fails(mid) ? hi : lo) = mid;
    }
    std::printf("sequence %s: fails first with the query %lld tokens after the trigger; around it:", argv[a],
                static_cast<long long>(hi - 1 - seq.positions[0]));
    for (int64_t off : {-1000, -100, -10, -2, -1, 0, 1, 2, 10, 100, 1000, 10000, 100000}) {
      if (hi + off > seq.positions[0] + 3 && hi + off <= spec.length) {
        std::printf(" %+lld:%s", static_cast<long long>(off), fails(hi + off) ? "x" : "ok");
      }
    }
    std::printf("\n");
    std::fflush(stdout);
  }
}
