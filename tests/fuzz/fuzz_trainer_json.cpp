// A checkpoint's trainer.json on arbitrary bytes: every field checked; then, where the options are
// small enough to try, the learning-rate schedule and the data sampler restored from it.
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "fuzz_util.h"
#include "model/optimizer.h"
#include "model/trainer.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  mamba::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto j = mamba::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "trainer.json");
    const mamba::TrainerProgress p = mamba::TrainerProgress::from_json(j, "trainer.json");
    const mamba::TrainOptions& o = p.options;
    const mamba::Schedule schedule{o.schedule, o.lr, o.lr_min < 0 ? o.lr / 10 : o.lr_min, o.warmup, o.steps};
    for (int64_t s : {int64_t{0}, p.step, o.steps - 1, o.warmup}) {
      if (!std::isfinite(schedule.at(s))) std::abort();
    }
    if (int64_t{o.batch} * o.seq_len <= 4096) {
      mamba::TokenStream stream;
      for (int i = 0; i < 5000; i++) stream.tokens.push_back(i % 257);
      std::vector<int32_t> inputs(static_cast<size_t>(o.batch) * o.seq_len), targets(inputs.size());
      mamba::BatchSampler sampler(stream, o.batch, o.seq_len, o.sequential, o.seed);
      sampler.restore(p.sampler_rng, p.sampler_cursor);
      sampler.next(inputs.data(), targets.data());
    }
  } catch (const mamba::Error&) {
  }
  return 0;
}
