"""mamba.cpp from Python: load Mamba models, generate, score, train, and the selective scan for PyTorch.

    import mambacpp
    m = mambacpp.Model("runs/a")                      # a model folder: config.json + model.safetensors
    for piece in m.generate("Fellow-Citizens", max_new_tokens=200, stream=True):
        print(piece, end="")
    logits = m.score(ids)                             # numpy float32 (L, V), or (B, L, V) for (B, L) ids
    s = m.session(temperature=0.8, seed=1); s.feed(ids); s2 = s.copy(); s.save("state.safetensors")
    mambacpp.train(data="texts/", out="runs/b", d_model=256, n_layer=4, steps=1000, on_step=print)

Everything runs in the library (C++, the GIL released); Ctrl-C stops a long call between two steps.
`mambacpp.torch` (imported on its own) offers `selective_scan_fn` with mamba_ssm's signature.
"""

import os as _os

# OpenMP's idle threads should sleep, not spin (they would take the cores from BLAS and from Python's
# other threads); libgomp reads this once, when it loads with the extension below. A value the user set
# is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core  # noqa: E402
from ._core import (  # noqa: E402,F401
    Cancelled,
    Completion,
    Error,
    Model,
    ModelConfig,
    Perplexity,
    Sampler,
    Session,
    State,
    Stream,
    TextDecoder,
    Tokenizer,
    TrainStep,
    TrainSummary,
    bf16_products,
    build_info,
    cuda_available,
    init,
    memory_limit,
    quantize,
    set_bf16_products,
    set_memory_limit,
    set_threads,
    threads,
)

__version__ = _core.version()

_TRAIN_OPTIONS = (
    "val_every", "init_from", "resume", "preset", "d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank",
    "batch", "seq_len", "accum", "steps", "warmup", "lr", "lr_min", "schedule", "weight_decay", "clip", "beta1",
    "beta2", "adam_eps", "seed", "sequential", "scan_chunk", "recompute", "eval_every", "eval_batches", "save_every",
    "keep", "fixed_batch", "dump_grads", "device", "dtype", "distributed", "dist_timeout_s", "rendezvous", "bucket_mb",
)


def _paths(value, name):
    if value is None:
        return []
    if isinstance(value, (str, bytes, _os.PathLike)):
        return [_os.fspath(value)]
    try:
        return [_os.fspath(v) for v in value]
    except TypeError:
        raise TypeError(f"{name}: expected a path or a list of paths, got {type(value).__name__}") from None


def train(data=None, out=None, *, tokens=None, on_step=None, **options):
    """Trains a Mamba language model (on the CPU or with device="cuda" a GPU); returns a TrainSummary.

    data: text files or folders (byte-level: bytes and an end-of-document token), or tokens: token files
    (MAMBATOK header), or fixed_batch: an integer .npy (B, L + 1) of rows trained on at every step. out:
    the run folder (latest model, log.jsonl, checkpoints/). A new model's shape: preset="130m", or d_model
    and n_layer (d_state, d_conv, expand, dt_rank). resume="runs/a" continues a run exactly: of the
    options given with it, the schedule's, the optimizer's, evaluation's and checkpoints' (steps, lr, ...)
    are applied and the others must equal the run's. init_from="folder" fine-tunes a model. Other
    options, as `mambacpp train`'s flags: batch, seq_len, accum, steps, warmup, lr, lr_min, schedule,
    weight_decay, clip, beta1, beta2, adam_eps, seed, sequential, scan_chunk, recompute, eval_every,
    eval_batches, save_every, keep, val_every, dump_grads (the first step's gradients to a .safetensors file). dtype:
    "fp32", or "bf16" / "fp16" mixed precision (fp32 master weights; fp16 with dynamic loss scaling, its
    skipped steps in TrainStep.skipped); by default bf16 on a GPU and fp32 on the CPU. Data
    parallel (docs/training.md): a script started by `mpirun -np N python3 ...` joins the job (batch is
    then the global batch; distributed=False trains alone), with dist_timeout_s, rendezvous, bucket_mb.

    on_step(TrainStep) is called after every step (step, loss, lr, grad_norm, tokens_per_s, and
    val_loss / val_bits when it validated); returning False stops the run. Ctrl-C or an exception in
    on_step stops it too: a checkpoint is saved first, then the exception is raised.
    """
    o = _core._TrainOptions()
    o.data = _paths(data, "data")
    o.tokens = _paths(tokens, "tokens")
    if out is not None:
        o.out = _os.fspath(out)
    for key, value in options.items():
        if key not in _TRAIN_OPTIONS:
            raise TypeError(f"train() got an unexpected keyword argument '{key}'")
        if key in ("init_from", "resume", "fixed_batch", "dump_grads", "rendezvous"):
            value = _os.fspath(value)
        try:
            setattr(o, key, value)
        except TypeError:
            raise TypeError(f"train(): {key}={value!r} has the wrong type") from None
    o.given = [key for key in options if key not in ("init_from", "resume", "fixed_batch", "dump_grads", "device")]
    if on_step is not None and not callable(on_step):
        raise TypeError("on_step: expected a callable taking a TrainStep")
    return _core._train(o, on_step)
