// mambacpp._core: the Python binding of the library API (include/mamba/mamba.h, include/mamba/kernels.h).
// The user-facing names are re-exported by mambacpp/__init__.py, which sets OpenMP's wait policy before
// this module loads.
//
// Rules kept by every function here:
//  - Every call that computes releases the GIL, and runs with a cancel check that takes the GIL back
//    for a moment to ask Python about pending signals: Ctrl-C raises KeyboardInterrupt between two
//    passes of a prefill, two decode steps or two training steps, and leaves the session usable.
//  - Arrays come in as anything NumPy can read; they are checked (integer ids in range, shapes) and
//    copied only where the type or the layout differs. Logits and states go out as new NumPy arrays that
//    the library writes into directly.
//  - Errors of the library are mambacpp.Error (a RuntimeError) with the CLI's messages; bad arguments are
//    TypeError or ValueError naming the argument.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <deque>
#include <sstream>

#include "mamba/kernels.h"
#include "mamba/mamba.h"

namespace py = pybind11;
using namespace mamba::api;

namespace {

// ---- cancellation: Python's signal handlers run when asked, with the GIL ----

// A check for the library to call between steps, on the thread that released the GIL: true never, but
// a pending KeyboardInterrupt (or another exception raised by a signal handler) is thrown through.
CancelCheck python_signals() {
  return [] {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    return false;
  };
}

// ---- arguments ----

// Ids as the library reads them: int32, C order. forcecast converts other integer types, after the
// range check of ids_array.
using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

[[noreturn]] void value_error(const std::string& message) { throw py::value_error(message); }
[[noreturn]] void type_error(const std::string& message) { throw py::type_error(message); }

// Token ids from a list or an array of integers, as int32 (B, L) or (L,): checked to lie in
// [0, 2^31) before any narrowing. `arg` names the argument in errors.
IdArray ids_array(py::handle obj, const char* arg, int min_dims, int max_dims, bool allow_empty = false) {
  if (py::isinstance<py::str>(obj) || py::isinstance<py::bytes>(obj)) {
    type_error(std::string(arg) + ": expected token ids (a list or array of integers), got text");
  }
  py::array arr;
  try {
    arr = py::array::ensure(obj);
  } catch (const py::error_already_set&) {
    arr = py::array();
  }
  if (!arr) type_error(std::string(arg) + ": expected token ids (a list or array of integers)");
  if (arr.size() == 0) {  // ([] reads as float64)
    if (allow_empty && arr.ndim() == 1) return IdArray(0);
    value_error(std::string(arg) + ": no token ids given");
  }
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u') {
    type_error(std::string(arg) + ": token ids must be integers, got dtype " + std::string(py::str(arr.dtype())));
  }
  if (arr.ndim() < min_dims || arr.ndim() > max_dims) {
    std::ostringstream m;
    m << arg << ": expected " << (min_dims == max_dims ? std::to_string(min_dims) : std::to_string(min_dims) + " or " + std::to_string(max_dims))
      << "-D token ids, got " << arr.ndim() << "-D";
    value_error(m.str());
  }
  if (arr.dtype().itemsize() > 4 || kind == 'u') {
    // Range first: a cast would wrap 2^32 + 5 to 5.
    py::module_ np = py::module_::import("numpy");
    const py::int_ lo = np.attr("min")(arr).attr("item")(), hi = np.attr("max")(arr).attr("item")();
    const bool low = lo < py::int_(0);
    if (low || hi > py::int_(0x7fffffff)) {
      value_error(std::string(arg) + ": token id " + py::repr(low ? lo : hi).cast<std::string>() + " is out of range");
    }
  }
  IdArray ids = IdArray::ensure(arr);
  if (!ids) throw py::error_already_set();
  return ids;
}

std::vector<int32_t> ids_vector(py::handle obj, const char* arg) {
  auto arr = ids_array(obj, arg, 1, 1, /*allow_empty=*/true);
  return std::vector<int32_t>(arr.data(), arr.data() + arr.size());
}

// A prompt: text (through the model's codec) or ids.
std::vector<int32_t> prompt_ids(const Model& model, py::handle prompt, const char* arg) {
  if (py::isinstance<py::str>(prompt)) {
    if (!model.has_text()) {
      throw mamba::Error(model.path().string() +
                         ": no tokenizer.json and not byte-level: give the prompt as token ids (or Model(..., tokenizer=...))");
    }
    return model.encode(prompt.cast<std::string>());
  }
  return ids_vector(prompt, arg);
}

std::filesystem::path path_arg(py::handle obj) {
  if (py::hasattr(obj, "path") && !py::isinstance<py::str>(obj)) {
    py::object p = obj.attr("path");
    if (PyCallable_Check(p.ptr())) p = p();
    return p.cast<std::filesystem::path>();
  }
  return obj.cast<std::filesystem::path>();
}

SamplingOptions sampling_options(double temperature, int top_k, double top_p, double min_p, double repetition_penalty,
                                 uint64_t seed) {
  SamplingOptions s;
  s.temperature = temperature;
  s.top_k = top_k;
  s.top_p = top_p;
  s.min_p = min_p;
  s.repetition_penalty = repetition_penalty;
  s.seed = seed;
  return s;
}

GenerationOptions generation_options(int max_new_tokens, std::optional<std::vector<std::string>> stop,
                                     bool stop_at_eos, int64_t max_prompt_tokens) {
  if (max_new_tokens < 0) value_error("max_new_tokens: must be ≥ 0, got " + std::to_string(max_new_tokens));
  GenerationOptions g;
  g.max_new_tokens = max_new_tokens;
  if (stop) g.stop = *stop;
  g.stop_at_eos = stop_at_eos;
  g.max_prompt_tokens = max_prompt_tokens;
  return g;
}

py::array_t<float> state_array(std::vector<float> values, std::vector<py::ssize_t> shape) {
  py::array_t<float> out(shape);
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

// ---- streaming ----

// The iterator of generate(..., stream=True): one decode step per piece asked for. Yields text pieces
// (str) for a model with text, token ids (int) otherwise.
struct Stream {
  Stream(std::shared_ptr<Session> s, bool t) : session(std::move(s)), text(t) {}
  std::shared_ptr<Session> session;
  bool text = true;
  std::deque<py::object> ready;  // pieces of the last step, not yet handed out
  bool done = false;

  py::object next() {
    while (ready.empty()) {
      if (done) throw py::stop_iteration();
      std::vector<std::pair<int32_t, std::string>> pieces;
      bool more;
      {
        py::gil_scoped_release release;
        more = session->next([&](int, int32_t id, std::string_view t) { pieces.emplace_back(id, std::string(t)); });
      }
      if (!more) done = true;
      for (auto& [id, t] : pieces) {
        if (text) {
          if (!t.empty()) ready.push_back(py::str(t));
        } else if (id >= 0) {
          ready.push_back(py::int_(id));
        }
      }
    }
    py::object piece = ready.front();
    ready.pop_front();
    return piece;
  }
};

py::object completion_result(const Completion& c) { return py::cast(c); }

std::string repr_step(const TrainStep& s) {
  std::ostringstream o;
  o.precision(4);
  o << "TrainStep(step=" << s.step << "/" << s.steps << ", loss=" << std::fixed << s.loss;
  if (s.evaluated) o << ", val_loss=" << s.val_loss << ", val_bits=" << s.val_bits;
  o.unsetf(std::ios::fixed);
  o << ", lr=" << s.lr << ", grad_norm=" << s.grad_norm << ", tokens_per_s=" << static_cast<int64_t>(s.tokens_per_s)
    << ", elapsed_s=" << s.elapsed_s << ")";
  return o.str();
}

// ---- the kernels for mambacpp.torch: raw pointers checked by the Python side ----

template <typename T>
T* ptr(uint64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

mamba::kernels::ScanArgs scan_args(int B, int L, int D, int N, int dtype, uint64_t y, uint64_t u, uint64_t delta,
                                   uint64_t A, uint64_t Bm, uint64_t Cm, uint64_t Dv, uint64_t z, uint64_t delta_bias,
                                   bool softplus, uint64_t last_state, uint64_t chunk_states) {
  mamba::kernels::ScanArgs a;
  a.batch = B;
  a.seqlen = L;
  a.dim = D;
  a.dstate = N;
  if (dtype < 0 || dtype > 2) value_error("dtype code must be 0 (fp32), 1 (bf16) or 2 (fp16)");
  a.dtype = static_cast<mamba::kernels::DType>(dtype);
  a.y = ptr<void>(y);
  a.u = ptr<const void>(u);
  a.delta = ptr<const void>(delta);
  a.A = ptr<const float>(A);
  a.B = ptr<const void>(Bm);
  a.C = ptr<const void>(Cm);
  a.D = ptr<const float>(Dv);
  a.z = ptr<const void>(z);
  a.delta_bias = ptr<const float>(delta_bias);
  a.delta_softplus = softplus;
  a.last_state = ptr<float>(last_state);
  a.chunk_states = ptr<float>(chunk_states);
  return a;
}

mamba::kernels::ScanGradArgs scan_grads(uint64_t dy, uint64_t dlast, uint64_t du, uint64_t ddelta, uint64_t dz,
                                        uint64_t dB, uint64_t dC, uint64_t dA, uint64_t dD, uint64_t ddelta_bias) {
  mamba::kernels::ScanGradArgs g;
  g.dy = ptr<const void>(dy);
  g.dlast_state = ptr<const float>(dlast);
  g.du = ptr<void>(du);
  g.ddelta = ptr<void>(ddelta);
  g.dz = ptr<void>(dz);
  g.dB = ptr<void>(dB);
  g.dC = ptr<void>(dC);
  g.dA = ptr<float>(dA);
  g.dD = ptr<float>(dD);
  g.ddelta_bias = ptr<float>(ddelta_bias);
  return g;
}

}  // namespace

PYBIND11_MODULE(_core, mod) {
  mod.doc() = "mamba.cpp's library API (use the names re-exported by the mambacpp package)";

  auto& error = py::register_exception<mamba::Error>(mod, "Error", PyExc_RuntimeError);
  error.doc() = "A failure the library reports: a bad file, option or token id, with the CLI's message.";
  py::register_exception<mamba::Cancelled>(mod, "Cancelled", error.ptr());

  mod.def("set_threads", &set_threads, py::arg("threads"),
        "Threads for the math (0: every core); also flushes subnormal floats to zero in them.");
  mod.def("threads", &threads, "Threads the math runs on.");
  mod.def("set_bf16_products", &set_bf16_products, py::arg("on"),
          "Multiply BF16 weights with the activations rounded to bf16 on CPUs with AVX-512 BF16 (about 2x the "
          "prefill; results within bf16 rounding of the exact path, the default). Process-wide.");
  mod.def("bf16_products", &bf16_products, "Whether set_bf16_products is on.");
  mod.def("version", &version);
  mod.def("build_info", &build_info);
  mod.def("cuda_available", &cuda_available, "Whether this build has the CUDA kernels.");
  mod.def("set_memory_limit", &set_memory_limit, py::arg("bytes"),
          "Work whose size comes from input is refused before it allocates anything when it needs more than "
          "this many bytes (0: the memory available, MemAvailable or the cgroup's limit). Process-wide.");
  mod.def("memory_limit", &memory_limit, "The bytes this process may still allocate (0: unknown).");

  // ---- plain data ----
  py::class_<ModelConfig>(mod, "ModelConfig", "A model's shape and tokenizer facts.")
      .def_readonly("d_model", &ModelConfig::d_model)
      .def_readonly("n_layer", &ModelConfig::n_layer)
      .def_readonly("vocab_size", &ModelConfig::vocab_size)
      .def_readonly("d_state", &ModelConfig::d_state)
      .def_readonly("d_conv", &ModelConfig::d_conv)
      .def_readonly("expand", &ModelConfig::expand)
      .def_readonly("dt_rank", &ModelConfig::dt_rank)
      .def_readonly("d_inner", &ModelConfig::d_inner)
      .def_readonly("byte_level", &ModelConfig::byte_level)
      .def_readonly("eos_token_id", &ModelConfig::eos_token_id)
      .def_readonly("tie_embeddings", &ModelConfig::tie_embeddings)
      .def_readonly("ssm_mode", &ModelConfig::ssm_mode)
      .def_readonly("parameters", &ModelConfig::parameters)
      .def_readonly("state_bytes", &ModelConfig::state_bytes)
      .def("__repr__", [](const ModelConfig& c) {
        std::ostringstream o;
        o << "ModelConfig(d_model=" << c.d_model << ", n_layer=" << c.n_layer << ", vocab_size=" << c.vocab_size
          << ", d_state=" << c.d_state << ", d_conv=" << c.d_conv << ", expand=" << c.expand << ", dt_rank="
          << c.dt_rank << ", byte_level=" << (c.byte_level ? "True" : "False") << ", parameters=" << c.parameters
          << ")";
        return o.str();
      });

  py::class_<Completion>(mod, "Completion", "What one generation produced: ids, text and why it finished.")
      .def_readonly("ids", &Completion::ids, "The new token ids (the end-of-sequence token excluded).")
      .def_readonly("text", &Completion::text, "Their text ('' for a model without text).")
      .def_property_readonly("finish", [](const Completion& c) { return finish_name(c.finish); },
                             "'eos', 'stop', 'length', or 'none' (not finished).")
      .def("__str__", [](const Completion& c) { return c.text; })
      .def("__repr__", [](const Completion& c) {
        return "Completion(text=" + std::string(py::repr(py::str(c.text))) + ", ids=<" + std::to_string(c.ids.size()) +
               " tokens>, finish='" + finish_name(c.finish) + "')";
      });

  py::class_<Perplexity>(mod, "Perplexity", "The result of Model.perplexity.")
      .def_readonly("nll", &Perplexity::nll, "Total negative log-likelihood, nats.")
      .def_readonly("tokens", &Perplexity::tokens)
      .def_readonly("seconds", &Perplexity::seconds)
      .def_property_readonly("perplexity", &Perplexity::perplexity)
      .def("__repr__", [](const Perplexity& p) {
        std::ostringstream o;
        o << "Perplexity(perplexity=" << p.perplexity() << ", tokens=" << p.tokens << ", nll=" << p.nll << ")";
        return o.str();
      });

  py::class_<TrainStep>(mod, "TrainStep", "One optimizer step of a training run, as on_step receives it.")
      .def_readonly("step", &TrainStep::step)
      .def_readonly("steps", &TrainStep::steps)
      .def_readonly("loss", &TrainStep::loss)
      .def_readonly("lr", &TrainStep::lr)
      .def_readonly("grad_norm", &TrainStep::grad_norm)
      .def_readonly("tokens_per_s", &TrainStep::tokens_per_s)
      .def_readonly("elapsed_s", &TrainStep::elapsed_s)
      .def_readonly("evaluated", &TrainStep::evaluated, "Whether validation ran at this step.")
      .def_readonly("val_loss", &TrainStep::val_loss)
      .def_readonly("val_bits", &TrainStep::val_bits, "Bits per byte (byte-level) or per token.")
      .def_readonly("loss_scale", &TrainStep::loss_scale, "fp16: the step's loss scale (0 in fp32 and bf16).")
      .def_readonly("skipped", &TrainStep::skipped,
                    "fp16: the step's gradients overflowed and it was skipped (the parameters left as they were).")
      .def("__repr__", &repr_step);

  py::class_<TrainSummary>(mod, "TrainSummary", "The end of a training run.")
      .def_readonly("steps", &TrainSummary::steps)
      .def_readonly("loss", &TrainSummary::loss)
      .def_readonly("val_loss", &TrainSummary::val_loss)
      .def_readonly("tokens_per_s", &TrainSummary::tokens_per_s)
      .def_readonly("seconds", &TrainSummary::seconds)
      .def_readonly("interrupted", &TrainSummary::interrupted)
      .def_readonly("skipped_steps", &TrainSummary::skipped_steps, "fp16: steps skipped for gradients that overflowed.")
      .def_property_readonly("checkpoint", [](const TrainSummary& s) { return s.checkpoint.string(); })
      .def("__repr__", [](const TrainSummary& s) {
        std::ostringstream o;
        o << "TrainSummary(steps=" << s.steps << ", loss=" << s.loss << ", val_loss=" << s.val_loss
          << ", tokens_per_s=" << static_cast<int64_t>(s.tokens_per_s) << ", seconds=" << s.seconds
          << ", interrupted=" << (s.interrupted ? "True" : "False") << ", checkpoint='" << s.checkpoint.string() << "')";
        return o.str();
      });

  // ---- tokenizer ----
  py::class_<Tokenizer>(mod, "Tokenizer",
                        "A GPT-2 / GPT-NeoX byte-level BPE tokenizer read from a Hugging Face tokenizer.json; the "
                        "ids are those HF tokenizers gives. Safe to share between threads.")
      .def(py::init([](py::object path) {
             const std::filesystem::path p = path.cast<std::filesystem::path>();
             py::gil_scoped_release release;
             return Tokenizer(p);
           }),
           py::arg("path"), "Reads a tokenizer.json, or the one in a folder.")
      .def("encode", [](const Tokenizer& t, const std::string& text) {
             py::gil_scoped_release release;
             return t.encode(text);
           }, py::arg("text"), "Text to token ids (list of int). Invalid UTF-8 becomes U+FFFD first.")
      .def("decode", [](const Tokenizer& t, py::object ids, bool skip_special) {
             const std::vector<int32_t> v = ids_vector(ids, "ids");
             py::gil_scoped_release release;
             return t.decode(v, skip_special);
           }, py::arg("ids"), py::arg("skip_special") = false, "Token ids to text.")
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def("token_id", &Tokenizer::token_id, py::arg("token"),
           "The id of a token as written in tokenizer.json ('Ġthe', '<|endoftext|>'), or -1.")
      .def("token_bytes", [](const Tokenizer& t, int32_t id) { return py::bytes(t.token_bytes(id)); }, py::arg("id"),
           "The bytes token `id` stands for (possibly part of a UTF-8 character).")
      .def("is_special", &Tokenizer::is_special, py::arg("id"))
      .def_property_readonly("path", &Tokenizer::path)
      .def("__len__", &Tokenizer::vocab_size)
      .def("__repr__", [](const Tokenizer& t) { return "Tokenizer('" + t.path() + "')"; });

  py::class_<TextDecoder>(mod, "TextDecoder", "Ids to text as they come: only whole UTF-8 characters.")
      .def("push", &TextDecoder::push, py::arg("id"), "The text this id completes (maybe '').")
      .def("finish", &TextDecoder::finish, "The rest; an unfinished character becomes U+FFFD.");

  py::class_<Sampler>(mod, "Sampler",
                      "Chooses tokens from logits as a Session does, for rows stepped together with Model.step.")
      .def(py::init([](int vocab, double temperature, int top_k, double top_p, double min_p, double repetition_penalty,
                       uint64_t seed) {
             return Sampler(sampling_options(temperature, top_k, top_p, min_p, repetition_penalty, seed), vocab);
           }),
           py::arg("vocab"), py::kw_only(), py::arg("temperature") = 0.8, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
           py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("seed") = 0)
      .def("sample", [](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits) {
             if (logits.ndim() != 1) value_error("logits: expected a 1-D array (vocab,)");
             return s.sample(std::span<const float>(logits.data(), static_cast<size_t>(logits.size())));
           }, py::arg("logits"), "The next token from logits (V,).")
      .def("observe", &Sampler::observe, py::arg("id"), "A token of the sequence, for the repetition penalty.");

  // ---- state ----
  py::class_<State>(mod, "State",
                    "The recurrent state of B sequences: per layer the convolution's tail and the SSM state, fp32. "
                    "Its size does not grow with the tokens fed.")
      .def_property_readonly("batch", &State::batch)
      .def_property_readonly("nbytes", &State::bytes)
      .def_property_readonly("conv", [](const State& s) {
             std::vector<float> v;
             {
               py::gil_scoped_release release;
               v = s.conv();
             }
             return state_array(std::move(v), {s.n_layer(), s.batch(), s.d_conv() - 1, s.d_inner()});
           }, "A copy: (n_layer, B, d_conv - 1, d_inner) float32.")
      .def_property_readonly("ssm", [](const State& s) {
             std::vector<float> v;
             {
               py::gil_scoped_release release;
               v = s.ssm();
             }
             return state_array(std::move(v), {s.n_layer(), s.batch(), s.d_inner(), s.d_state()});
           }, "A copy: (n_layer, B, d_inner, d_state) float32.")
      .def("set", [](State& s, py::array_t<float, py::array::c_style | py::array::forcecast> conv,
                     py::array_t<float, py::array::c_style | py::array::forcecast> ssm) {
             const std::span<const float> c(conv.data(), static_cast<size_t>(conv.size()));
             const std::span<const float> h(ssm.data(), static_cast<size_t>(ssm.size()));
             py::gil_scoped_release release;  // the arrays stay alive: the caller holds them
             s.set(c, h);
           }, py::arg("conv"), py::arg("ssm"), "Sets both parts from arrays shaped as .conv and .ssm.")
      .def("reset", &State::reset, py::call_guard<py::gil_scoped_release>(), "Zeros: the state before any token.")
      .def("row", &State::row, py::arg("b"), py::call_guard<py::gil_scoped_release>(),
           "Sequence b as a state of batch 1.")
      .def("set_row", &State::set_row, py::arg("b"), py::arg("state"), py::call_guard<py::gil_scoped_release>(),
           "Puts a state of batch 1 in row b.")
      .def("keep_rows", [](State& s, std::vector<int> rows) {
             py::gil_scoped_release release;
             s.keep_rows(rows);
           }, py::arg("rows"), "Keeps the rows given (ascending), in that order.")
      .def_static("concat", [](const std::vector<const State*>& parts) {
             py::gil_scoped_release release;
             return State::concat(parts);
           }, py::arg("states"), "The states' sequences stacked in order.")
      .def("copy", [](const State& s) {
             py::gil_scoped_release release;
             return State(s);
           }, "A deep copy.")
      .def("__copy__", [](const State& s) {
             py::gil_scoped_release release;
             return State(s);
           })
      .def("save", [](const State& s, const std::filesystem::path& path) {
             py::gil_scoped_release release;
             s.save(path);
           }, py::arg("path"), "Writes a safetensors file with tensors 'conv' and 'ssm'.")
      .def("__repr__", [](const State& s) {
        return "State(batch=" + std::to_string(s.batch()) + ", nbytes=" + std::to_string(s.bytes()) + ")";
      });

  // ---- session ----
  py::class_<Stream>(mod, "Stream", "The iterator of generate(..., stream=True).")
      .def("__iter__", [](Stream& s) -> Stream& { return s; })
      .def("__next__", &Stream::next)
      .def_property_readonly("session", [](const Stream& s) { return s.session; },
                             "The session being generated (its .output, .text, .finish).");

  py::class_<Session, std::shared_ptr<Session>>(
      mod, "Session",
      "One sequence being generated: its recurrent state, next-token logits, sampler and text decoder. Feed "
      "it, generate, feed more (turns), copy, save and load it.")
      .def("feed", [](Session& s, py::object tokens) {
             // The model is only needed to encode text.
             std::vector<int32_t> ids;
             if (py::isinstance<py::str>(tokens)) {
               const std::string text = tokens.cast<std::string>();
               py::gil_scoped_release release;
               s.feed_text(text, python_signals());
               return;
             }
             ids = ids_vector(tokens, "tokens");
             py::gil_scoped_release release;
             s.feed(ids, python_signals());
           }, py::arg("tokens"),
           "Runs text or token ids through the state (after the last generated token). Ctrl-C leaves the "
           "session as it was.")
      .def("generate", [](std::shared_ptr<Session> s, bool stream) -> py::object {
             if (stream) return py::cast(Stream{s, s->has_text()});
             Completion c;
             {
               py::gil_scoped_release release;
               c = s->generate({}, python_signals());
             }
             return completion_result(c);
           }, py::arg("stream") = false,
           "Generates up to max_new_tokens (the session's options). Returns a Completion, or with "
           "stream=True an iterator of text pieces (ids for a model without text).")
      .def("copy", [](const Session& s) {
             py::gil_scoped_release release;
             return std::make_shared<Session>(s);
           }, "An independent copy.")
      .def("__copy__", [](const Session& s) {
             py::gil_scoped_release release;
             return std::make_shared<Session>(s);
           })
      .def("save", [](const Session& s, const std::filesystem::path& path) {
             py::gil_scoped_release release;
             s.save(path);
           }, py::arg("path"),
           "Writes the session (state, the token waiting to be fed, the sampler's state) as safetensors; "
           "Model.load_session reads it, and so does `mambacpp generate --load-state`.")
      .def("reset", [](Session& s) {
             py::gil_scoped_release release;
             s.reset();
           }, "Back to an empty session with the same options.")
      .def_property_readonly("state", [](const Session& s) {
             py::gil_scoped_release release;
             return s.state();
           }, "A copy of the recurrent state (batch 1).")
      .def_property_readonly("logits", [](const Session& s) -> py::object {
             std::vector<float> l;
             {
               py::gil_scoped_release release;
               l = s.logits();
             }
             if (l.empty()) return py::none();
             py::array_t<float> out(static_cast<py::ssize_t>(l.size()));
             std::copy(l.begin(), l.end(), out.mutable_data());
             return out;
           }, "The next token's logits (V,) after a feed, or None while the last generated token waits to be fed.")
      // (Properties take no call_guard: each getter releases the GIL itself, as the lock may be taken.)
      .def_property_readonly("output", [](const Session& s) {
             py::gil_scoped_release release;
             return s.output();
           }, "Ids produced by the last generate.")
      .def_property_readonly("text", [](const Session& s) {
             py::gil_scoped_release release;
             return s.text();
           }, "Text produced by the last generate.")
      .def_property_readonly("finish", [](const Session& s) {
             Finish f;
             {
               py::gil_scoped_release release;
               f = s.finish();
             }
             return finish_name(f);
           });

  // ---- model ----
  py::class_<Model>(mod, "Model",
                    "A Mamba language model loaded from a Hugging Face model folder (config.json + "
                    "model.safetensors). Copies share the weights; one compute call runs at a time.")
      .def(py::init([](py::object path, const std::string& device, std::optional<std::string> dtype,
                       int64_t max_tokens, py::object tokenizer) {
             ModelOptions o;
             o.device = device;
             o.dtype = dtype.value_or("");
             o.max_tokens = max_tokens;
             if (!tokenizer.is_none()) o.tokenizer = path_arg(tokenizer);
             const std::filesystem::path dir = path.cast<std::filesystem::path>();
             py::gil_scoped_release release;
             return Model(dir, o);
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = py::none(), py::arg("max_tokens") = 2048,
           py::arg("tokenizer") = py::none(),
           "Loads a model folder. device: 'cpu', 'cuda' or 'cuda:N'; dtype: None (the file's), 'fp32', 'bf16', "
           "'fp16' or 'int8' (quantized on load); tokenizer: a tokenizer.json (or Tokenizer) for text in and out, "
           "by default the folder's (a byte-level model reads and writes bytes).")
      .def_property_readonly("config", &Model::config)
      .def_property_readonly("path", [](const Model& m) { return m.path().string(); })
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("dtype", &Model::dtype)
      .def_property_readonly("weight_dtype", &Model::weight_dtype)
      .def_property_readonly("has_text", &Model::has_text)
      .def("describe", &Model::describe)
      .def("encode", [](const Model& m, const std::string& text) { return m.encode(text); }, py::arg("text"),
           "Text to ids as this model reads it (bytes, or its tokenizer).")
      .def("decode", [](const Model& m, py::object ids) { return m.decode(ids_vector(ids, "ids")); }, py::arg("ids"))
      .def("text_decoder", &Model::text_decoder)
      .def("score", [](const Model& m, py::object ids) {
             IdArray tokens;
             if (py::isinstance<py::str>(ids)) {
               tokens = IdArray(py::cast(prompt_ids(m, ids, "ids")));
             } else {
               tokens = ids_array(ids, "ids", 1, 2);
             }
             const bool batched = tokens.ndim() == 2;
             const int B = batched ? static_cast<int>(tokens.shape(0)) : 1;
             const int L = static_cast<int>(tokens.shape(tokens.ndim() - 1));
             const int V = m.config().vocab_size;
             std::vector<py::ssize_t> shape = {L, V};
             if (batched) shape.insert(shape.begin(), B);
             check_memory(m.forward_bytes(B, L, Logits::All), "score: logits of " + std::to_string(B) + " × " +
                                                                  std::to_string(L) + " tokens × " + std::to_string(V));
             py::array_t<float> logits(shape);
             const int32_t* t = tokens.data();
             float* out = logits.mutable_data();
             {
               py::gil_scoped_release release;
               m.score(t, B, L, out, python_signals());
             }
             return logits;
           }, py::arg("ids"),
           "Logits of every position from the zero state, float32: (L, V) for ids (L,) or text, (B, L, V) for "
           "ids (B, L). The same numbers as `mambacpp score`.")
      .def("perplexity", [](const Model& m, py::object text_or_ids, int chunk) {
             const std::vector<int32_t> ids = prompt_ids(m, text_or_ids, "text_or_ids");
             py::gil_scoped_release release;
             return m.perplexity(ids, chunk, {}, python_signals());
           }, py::arg("text_or_ids"), py::arg("chunk") = 512,
           "Perplexity of a whole text or id sequence through the recurrent state in chunks (no window); the "
           "first token is predicted from the end-of-document token.")
      .def("new_state", &Model::new_state, py::arg("batch") = 1, "A zero state of `batch` sequences.")
      .def("load_state", [](const Model& m, const std::filesystem::path& p) { return m.load_state(p); }, py::arg("path"))
      .def("forward", [](const Model& m, py::object ids, State& state, const std::string& logits) -> py::object {
             auto tokens = ids_array(ids, "ids", 2, 2);
             const int B = static_cast<int>(tokens.shape(0)), L = static_cast<int>(tokens.shape(1));
             const int V = m.config().vocab_size;
             Logits which;
             py::array_t<float> out;
             if (logits == "all") {
               which = Logits::All;
               out = py::array_t<float>(std::vector<py::ssize_t>{B, L, V});
             } else if (logits == "last") {
               which = Logits::Last;
               out = py::array_t<float>(std::vector<py::ssize_t>{B, V});
             } else if (logits == "none") {
               which = Logits::None;
             } else {
               value_error("logits: expected 'all', 'last' or 'none', got '" + logits + "'");
             }
             if (state.batch() != B) {
               value_error("state: holds " + std::to_string(state.batch()) + " sequences, ids have " + std::to_string(B));
             }
             float* o = which == Logits::None ? nullptr : out.mutable_data();
             const int32_t* t = tokens.data();
             {
               py::gil_scoped_release release;
               m.forward(t, B, L, state, o, which, python_signals());
             }
             if (which == Logits::None) return py::none();
             return out;
           }, py::arg("ids"), py::arg("state"), py::arg("logits") = "all",
           "Runs ids (B, L) from `state` (batch B), leaving the final state there. Returns logits (B, L, V) "
           "('all'), (B, V) ('last') or None.")
      .def("step", [](const Model& m, py::object ids, State& state) {
             auto tokens = ids_array(ids, "ids", 1, 1);
             if (tokens.shape(0) != state.batch()) {
               value_error("ids: " + std::to_string(tokens.shape(0)) + " ids for a state of " +
                           std::to_string(state.batch()) + " sequences");
             }
             py::array_t<float> out(std::vector<py::ssize_t>{state.batch(), m.config().vocab_size});
             float* o = out.mutable_data();
             const int32_t* t = tokens.data();
             {
               py::gil_scoped_release release;
               m.step(t, state, o);
             }
             return out;
           }, py::arg("ids"), py::arg("state"), "One token for each sequence of the state (B ids): logits (B, V).")
      .def("session", [](const Model& m, double temperature, int top_k, double top_p, double min_p,
                         double repetition_penalty, uint64_t seed, int max_new_tokens,
                         std::optional<std::vector<std::string>> stop, bool stop_at_eos, int64_t max_prompt_tokens) {
             return std::make_shared<Session>(
                 m.session(sampling_options(temperature, top_k, top_p, min_p, repetition_penalty, seed),
                           generation_options(max_new_tokens, stop, stop_at_eos, max_prompt_tokens)));
           },
           py::kw_only(), py::arg("temperature") = 0.8, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
           py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("seed") = 0,
           py::arg("max_new_tokens") = 200, py::arg("stop") = py::none(), py::arg("stop_at_eos") = true,
           py::arg("max_prompt_tokens") = int64_t{1} << 20, "A new empty session with these options.")
      .def("load_session", [](const Model& m, const std::filesystem::path& path, double temperature, int top_k,
                              double top_p, double min_p, double repetition_penalty, std::optional<uint64_t> seed,
                              int max_new_tokens, std::optional<std::vector<std::string>> stop, bool stop_at_eos,
                              int64_t max_prompt_tokens) {
             const SamplingOptions s =
                 sampling_options(temperature, top_k, top_p, min_p, repetition_penalty, seed.value_or(0));
             const GenerationOptions g = generation_options(max_new_tokens, stop, stop_at_eos, max_prompt_tokens);
             py::gil_scoped_release release;
             return std::make_shared<Session>(m.load_session(path, s, g, !seed.has_value()));
           },
           py::arg("path"), py::kw_only(), py::arg("temperature") = 0.8, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
           py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("seed") = py::none(),
           py::arg("max_new_tokens") = 200, py::arg("stop") = py::none(), py::arg("stop_at_eos") = true,
           py::arg("max_prompt_tokens") = int64_t{1} << 20,
           "A session saved by Session.save. Its sampler goes on where it stopped unless a seed is given.")
      .def("generate", [](const Model& m, py::object prompt, int max_new_tokens, double temperature, int top_k,
                          double top_p, double min_p, double repetition_penalty, uint64_t seed,
                          std::optional<std::vector<std::string>> stop, bool stop_at_eos, bool stream) -> py::object {
             const SamplingOptions s = sampling_options(temperature, top_k, top_p, min_p, repetition_penalty, seed);
             const GenerationOptions g = generation_options(max_new_tokens, stop, stop_at_eos, int64_t{1} << 40);
             // A batch: a list of prompts (texts, or lists of ids), or a 2-D array of ids.
             bool batch = false;
             if (py::isinstance<py::list>(prompt) || py::isinstance<py::tuple>(prompt)) {
               py::sequence seq = prompt.cast<py::sequence>();
               batch = seq.size() > 0 && !py::isinstance<py::int_>(seq[0]) &&
                       !py::isinstance(seq[0], py::module_::import("numpy").attr("integer"));
             } else if (py::isinstance<py::array>(prompt)) {
               batch = prompt.cast<py::array>().ndim() == 2;
             }
             if (batch) {
               if (stream) value_error("stream: streams one prompt at a time; give a single prompt");
               std::vector<std::vector<int32_t>> prompts;
               for (py::handle p : prompt) prompts.push_back(prompt_ids(m, p, "prompt"));
               std::vector<Completion> out;
               {
                 py::gil_scoped_release release;
                 out = m.generate(prompts, s, g, {}, python_signals());
               }
               return py::cast(out);
             }
             const std::vector<int32_t> ids = prompt_ids(m, prompt, "prompt");
             auto session = std::make_shared<Session>(m.session(s, g));
             {
               py::gil_scoped_release release;
               session->feed(ids, python_signals());
             }
             if (stream) return py::cast(Stream{session, m.has_text()});
             Completion c;
             {
               py::gil_scoped_release release;
               c = session->generate({}, python_signals());
             }
             return completion_result(c);
           },
           py::arg("prompt"), py::arg("max_new_tokens") = 200, py::arg("temperature") = 0.8, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0, py::arg("min_p") = 0.0, py::arg("repetition_penalty") = 1.0, py::arg("seed") = 0,
           py::arg("stop") = py::none(), py::arg("stop_at_eos") = true, py::arg("stream") = false,
           "Continues a prompt (text, or token ids). Returns a Completion (.text, .ids, .finish); with "
           "stream=True an iterator of text pieces (ids for a model without text). A list of prompts is "
           "decoded together (prompt i samples with seed + i) and gives a list of Completions.")
      .def("__repr__", [](const Model& m) {
        return "Model('" + m.path().string() + "', device='" + m.device() + "', dtype='" + m.dtype() + "')";
      });

  // ---- new models and training ----
  mod.def("init", [](const std::filesystem::path& out, const std::string& preset, int d_model, int n_layer, int d_state,
                   int d_conv, int expand, int dt_rank, int vocab_size, bool byte_level, uint64_t seed,
                   const std::string& dtype) {
          InitOptions o;
          o.preset = preset;
          o.d_model = d_model;
          o.n_layer = n_layer;
          o.d_state = d_state;
          o.d_conv = d_conv;
          o.expand = expand;
          o.dt_rank = dt_rank;
          o.vocab_size = vocab_size;
          o.byte_level = byte_level;
          o.seed = seed;
          o.dtype = dtype;
          py::gil_scoped_release release;
          return init_model(out, o);
        },
        py::arg("out"), py::kw_only(), py::arg("preset") = "", py::arg("d_model") = 0, py::arg("n_layer") = 0,
        py::arg("d_state") = 16, py::arg("d_conv") = 4, py::arg("expand") = 2, py::arg("dt_rank") = 0,
        py::arg("vocab_size") = 50280, py::arg("byte_level") = false, py::arg("seed") = 0, py::arg("dtype") = "fp32",
        "Writes a randomly initialised model (the official initialisation) to `out`; returns its ModelConfig.");
  mod.def("quantize", [](const std::filesystem::path& dir, const std::filesystem::path& out) {
          py::gil_scoped_release release;
          return quantize_model(dir, out).config;
        },
        py::arg("dir"), py::arg("out"),
        "Writes the model folder `dir` to `out` with int8 matrices (q8 blocks of 32 with F16 scales) and its "
        "tokenizer files; returns its ModelConfig. The folder loads as any other (`mambacpp quantize`).");

  mod.def("_train", [](const TrainOptions& o, py::object on_step) {
          StepCallback callback = [on_step](const TrainStep& s) {
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            if (on_step.is_none()) return true;
            py::object r = on_step(s);
            return !(r.is(py::bool_(false)));
          };
          std::unique_ptr<Training> t;
          {
            py::gil_scoped_release release;
            t = std::make_unique<Training>(o);
          }
          py::gil_scoped_release release;
          return t->run(callback);
        },
        py::arg("options"), py::arg("on_step"));

  py::class_<TrainOptions>(mod, "_TrainOptions")
      .def(py::init<>())
      .def_readwrite("data", &TrainOptions::data)
      .def_readwrite("tokens", &TrainOptions::tokens)
      .def_readwrite("fixed_batch", &TrainOptions::fixed_batch)
      .def_readwrite("dump_grads", &TrainOptions::dump_grads)
      .def_readwrite("given", &TrainOptions::given)
      .def_readwrite("val_every", &TrainOptions::val_every)
      .def_readwrite("out", &TrainOptions::out)
      .def_readwrite("resume", &TrainOptions::resume)
      .def_readwrite("init_from", &TrainOptions::init_from)
      .def_readwrite("device", &TrainOptions::device)
      .def_readwrite("dtype", &TrainOptions::dtype)
      .def_readwrite("preset", &TrainOptions::preset)
      .def_readwrite("d_model", &TrainOptions::d_model)
      .def_readwrite("n_layer", &TrainOptions::n_layer)
      .def_readwrite("d_state", &TrainOptions::d_state)
      .def_readwrite("d_conv", &TrainOptions::d_conv)
      .def_readwrite("expand", &TrainOptions::expand)
      .def_readwrite("dt_rank", &TrainOptions::dt_rank)
      .def_readwrite("batch", &TrainOptions::batch)
      .def_readwrite("seq_len", &TrainOptions::seq_len)
      .def_readwrite("accum", &TrainOptions::accum)
      .def_readwrite("steps", &TrainOptions::steps)
      .def_readwrite("warmup", &TrainOptions::warmup)
      .def_readwrite("lr", &TrainOptions::lr)
      .def_readwrite("lr_min", &TrainOptions::lr_min)
      .def_readwrite("schedule", &TrainOptions::schedule)
      .def_readwrite("weight_decay", &TrainOptions::weight_decay)
      .def_readwrite("clip", &TrainOptions::clip)
      .def_readwrite("beta1", &TrainOptions::beta1)
      .def_readwrite("beta2", &TrainOptions::beta2)
      .def_readwrite("adam_eps", &TrainOptions::adam_eps)
      .def_readwrite("seed", &TrainOptions::seed)
      .def_readwrite("sequential", &TrainOptions::sequential)
      .def_readwrite("scan_chunk", &TrainOptions::scan_chunk)
      .def_readwrite("recompute", &TrainOptions::recompute)
      .def_readwrite("eval_every", &TrainOptions::eval_every)
      .def_readwrite("eval_batches", &TrainOptions::eval_batches)
      .def_readwrite("save_every", &TrainOptions::save_every)
      .def_readwrite("keep", &TrainOptions::keep)
      .def_readwrite("distributed", &TrainOptions::distributed)
      .def_readwrite("dist_timeout_s", &TrainOptions::dist_timeout_s)
      .def_readwrite("rendezvous", &TrainOptions::rendezvous)
      .def_readwrite("bucket_mb", &TrainOptions::bucket_mb);

  // ---- the scan kernels, by raw pointer (mambacpp.torch checks every tensor first) ----
  mod.def("_scan_state_chunk", [](bool cuda) {
    return mamba::kernels::scan_state_chunk(cuda ? mamba::kernels::Device::Cuda : mamba::kernels::Device::Cpu);
  });
  mod.def("_scan_cuda_built", &mamba::kernels::cuda_built);
  mod.def("_scan_forward", [](bool cuda, int B, int L, int D, int N, int dtype, uint64_t y, uint64_t u, uint64_t delta,
                            uint64_t A, uint64_t Bm, uint64_t Cm, uint64_t Dv, uint64_t z, uint64_t delta_bias,
                            bool softplus, uint64_t last_state, uint64_t chunk_states, uint64_t workspace,
                            uint64_t stream) {
    const auto a = scan_args(B, L, D, N, dtype, y, u, delta, A, Bm, Cm, Dv, z, delta_bias, softplus, last_state, chunk_states);
    py::gil_scoped_release release;
    if (cuda) {
      mamba::kernels::scan_forward_cuda(a, ptr<void>(workspace), ptr<void>(stream));
    } else {
      mamba::kernels::scan_forward_cpu(a);
    }
  });
  mod.def("_scan_forward_workspace", [](int B, int L, int D, int N, int dtype, bool has_D, bool has_z, bool has_bias,
                                      bool softplus) {
    // Only the sizes and which inputs are present matter; non-null placeholders stand for the pointers.
    const uint64_t p = 256;
    const auto a = scan_args(B, L, D, N, dtype, p, p, p, p, p, p, has_D ? p : 0, has_z ? p : 0, has_bias ? p : 0,
                             softplus, 0, p);
    return mamba::kernels::scan_forward_cuda_workspace(a);
  });
  mod.def("_scan_backward", [](bool cuda, int B, int L, int D, int N, int dtype, uint64_t u, uint64_t delta, uint64_t A,
                             uint64_t Bm, uint64_t Cm, uint64_t Dv, uint64_t z, uint64_t delta_bias, bool softplus,
                             uint64_t chunk_states, uint64_t dy, uint64_t dlast, uint64_t du, uint64_t ddelta,
                             uint64_t dz, uint64_t dB, uint64_t dC, uint64_t dA, uint64_t dD, uint64_t ddelta_bias,
                             uint64_t workspace, uint64_t stream) {
    // y is not read by the backward; u stands in for it.
    const auto a = scan_args(B, L, D, N, dtype, u, u, delta, A, Bm, Cm, Dv, z, delta_bias, softplus, 0, chunk_states);
    const auto g = scan_grads(dy, dlast, du, ddelta, dz, dB, dC, dA, dD, ddelta_bias);
    py::gil_scoped_release release;
    if (cuda) {
      mamba::kernels::scan_backward_cuda(a, g, ptr<void>(workspace), ptr<void>(stream));
    } else {
      mamba::kernels::scan_backward_cpu(a, g);
    }
  });
  mod.def("_scan_backward_workspace", [](int B, int L, int D, int N, int dtype, bool has_D, bool has_z, bool has_bias,
                                       bool softplus, bool has_dlast) {
    const uint64_t p = 256;
    const auto a = scan_args(B, L, D, N, dtype, p, p, p, p, p, p, has_D ? p : 0, has_z ? p : 0, has_bias ? p : 0,
                             softplus, 0, p);
    const auto g = scan_grads(p, has_dlast ? p : 0, p, p, has_z ? p : 0, p, p, p, has_D ? p : 0, has_bias ? p : 0);
    return mamba::kernels::scan_backward_cuda_workspace(a, g);
  });
  mod.def("_transpose", [](uint64_t dst, uint64_t src, int64_t batch, int64_t rows, int64_t cols, int elem_bytes,
                           int64_t src_batch_stride, int64_t src_row_stride, uint64_t stream) {
    py::gil_scoped_release release;
    mamba::kernels::transpose_cuda(ptr<void>(dst), ptr<const void>(src), batch, rows, cols, elem_bytes,
                                   src_batch_stride, src_row_stride, ptr<void>(stream));
  });
}
