#include "ops/backend.h"

#include <map>
#include <memory>
#include <mutex>

#include "core/error.h"
#include "ops/cpu/backend.h"
#if MAMBA_HAVE_CUDA
#include "ops/cuda/backend.h"
#endif

namespace mamba {

Device Device::parse(std::string_view text) {
  if (text == "cpu") return Device{};
  if (text == "cuda") return Device{Kind::Cuda, 0};
  if (text.starts_with("cuda:") && text.size() > 5 && text.size() <= 8) {
    int index = 0;
    for (char c : text.substr(5)) {
      if (c < '0' || c > '9') fail("device \"", text, "\": expected cpu, cuda or cuda:N");
      index = index * 10 + (c - '0');
    }
    return Device{Kind::Cuda, index};
  }
  fail("device \"", text, "\": expected cpu, cuda or cuda:N");
}

std::string Device::name() const { return kind == Kind::Cpu ? "cpu" : "cuda:" + std::to_string(index); }

void Backend::begin_capture() { fail(describe(), ": cannot record work"); }
std::unique_ptr<Backend::Graph> Backend::end_capture() { fail(describe(), ": cannot record work"); }
void Backend::replay(Graph&) { fail(describe(), ": cannot record work"); }

MatmulParams delta_product(const ScanParams& p, void* product) {
  if (p.delta_rank < 1) fail("scan: delta_proj needs delta_rank ≥ 1 (got ", p.delta_rank, ")");
  MatmulParams m;
  m.out = product, m.ldo = p.dim, m.out_dtype = p.dtype;
  m.inp = p.delta, m.ldi = p.delta_stride, m.dtype = p.dtype;
  m.weight = p.delta_proj;
  m.M = int64_t{p.batch} * p.seqlen, m.K = p.delta_rank, m.N = p.dim;
  return m;
}

ScanParams over_delta_product(const ScanParams& p, void* product) {
  ScanParams q = p;
  q.delta = product, q.delta_stride = p.dim;
  q.delta_proj = WeightView{}, q.delta_rank = 0;
  return q;
}

Backend& Backend::get(Device device) {
  // Made once per device and never destroyed: a GPU's handles must not be torn down while the CUDA
  // runtime is unloading at exit.
  static std::mutex mutex;
  static auto* backends = new std::map<std::pair<int, int>, Backend*>();
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(static_cast<int>(device.kind), device.index);
  if (auto it = backends->find(key); it != backends->end()) return *it->second;
  std::unique_ptr<Backend> made;
  if (device.kind == Device::Kind::Cpu) {
    made = cpu::make_backend();
  } else {
#if MAMBA_HAVE_CUDA
    made = cuda::make_backend(device.index);  // fails naming the reason: no GPU, index out of range
#else
    fail("device ", device.name(), ": this build of mamba.cpp has no CUDA (nvcc was not found when it was built, or "
         "MAMBA_CUDA=OFF); rebuild with the CUDA toolkit installed");
#endif
  }
  Backend* b = made.release();
  (*backends)[key] = b;
  return *b;
}

}  // namespace mamba
