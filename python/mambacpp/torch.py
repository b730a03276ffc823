"""The selective scan of mamba.cpp as a PyTorch autograd function, with mamba_ssm's signature.

    from mambacpp.torch import selective_scan_fn      # instead of mamba_ssm.ops.selective_scan_interface
    y = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

Layouts are mamba_ssm's: u, delta, z (batch, dim, seqlen); B, C (batch, dstate, seqlen) or
(batch, 1, dstate, seqlen); A (dim, dstate) float32; D and delta_bias (dim,) float32. u, delta, z, B and C
share one dtype: float32, bfloat16 or float16. The output has u's dtype and layout; with
return_last_state=True the final state (batch, dim, dstate) float32 comes too (and its gradient, if any,
flows back).

On a CUDA tensor the library's CUDA kernels run (forward and backward) on torch's current stream; on
the CPU its fp32 scan runs (bfloat16 and float16 are computed in float32 there). The kernels read
token-major arrays (batch, seqlen, X), so the inputs are copied into that layout once per call: any
strides are accepted. When a gradient will follow, the forward keeps the state at every chunk of steps,
and the backward recomputes the states within a chunk from them (paper section 3.3.2): nothing of size
batch x seqlen x dim x dstate is stored.

Arguments are checked before anything runs: a wrong type, dtype, shape or device raises TypeError or
ValueError naming the argument; a failure inside the library raises mambacpp.Error.
"""

import torch as _torch

from . import _core

__all__ = ["selective_scan_fn", "SelectiveScanFn"]

_DTYPES = {_torch.float32: 0, _torch.bfloat16: 1, _torch.float16: 2}


def _fail(cls, name, message):
    raise cls(f"selective_scan_fn: {name}: {message}")


def _tensor(name, t, device, optional=False):
    if t is None:
        if optional:
            return None
        _fail(TypeError, name, "is required")
    if not isinstance(t, _torch.Tensor):
        _fail(TypeError, name, f"expected a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        _fail(ValueError, name, f"is on {t.device}, u is on {device}: every tensor must be on one device")
    return t


def _shape(name, t, want, names):
    if tuple(t.shape) != tuple(want):
        _fail(ValueError, name, f"expected shape {names} = {tuple(want)}, got {tuple(t.shape)}")


def _check(u, delta, A, B, C, D, z, delta_bias):
    u = _tensor("u", u, u.device if isinstance(u, _torch.Tensor) else None)
    device = u.device
    if device.type not in ("cpu", "cuda"):
        _fail(ValueError, "u", f"is on {device}; the scan runs on the CPU and on CUDA devices")
    if u.dtype not in _DTYPES:
        _fail(TypeError, "u", f"dtype {u.dtype} is not supported (float32, bfloat16 or float16)")
    if u.dim() != 3:
        _fail(ValueError, "u", f"expected 3 dimensions (batch, dim, seqlen), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if batch == 0 or dim == 0 or seqlen == 0:
        _fail(ValueError, "u", f"has an empty dimension: shape {tuple(u.shape)}")
    for name, t in (("delta", delta), ("z", z)):
        t = _tensor(name, t, device, optional=name == "z")
        if t is None:
            continue
        if t.dtype != u.dtype:
            _fail(TypeError, name, f"dtype {t.dtype} differs from u's {u.dtype}")
        _shape(name, t, u.shape, "(batch, dim, seqlen)")
    A = _tensor("A", A, device)
    if A.is_complex():
        _fail(TypeError, "A", "complex A is not supported (real float32 only)")
    if A.dtype != _torch.float32:
        _fail(TypeError, "A", f"dtype {A.dtype}: expected float32")
    if A.dim() != 2 or A.shape[0] != dim:
        _fail(ValueError, "A", f"expected shape (dim, dstate) with dim = {dim}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    if dstate == 0:
        _fail(ValueError, "A", "dstate is 0")
    bc = []
    for name, t in (("B", B), ("C", C)):
        t = _tensor(name, t, device)
        if t.dtype != u.dtype:
            _fail(TypeError, name, f"dtype {t.dtype} differs from u's {u.dtype} (input-dependent {name} has u's dtype)")
        if t.dim() == 4:
            if t.shape[1] != 1:
                _fail(ValueError, name, f"groups = {t.shape[1]}: only one group (batch, 1, dstate, seqlen) is supported")
            _shape(name, t, (batch, 1, dstate, seqlen), "(batch, 1, dstate, seqlen)")
        elif t.dim() == 3:
            _shape(name, t, (batch, dstate, seqlen), "(batch, dstate, seqlen)")
        else:
            _fail(ValueError, name, f"expected (batch, dstate, seqlen): an input-dependent {name} "
                  f"(a constant {name} of shape (dim, dstate) is not supported), got shape {tuple(t.shape)}")
        bc.append(t)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        t = _tensor(name, t, device, optional=True)
        if t is None:
            continue
        if t.dtype != _torch.float32:
            _fail(TypeError, name, f"dtype {t.dtype}: expected float32")
        _shape(name, t, (dim,), "(dim,)")
    return batch, dim, seqlen, dstate


def _swapped(t, dtype):
    """(batch, R, C) -> (batch, C, R) contiguous in dtype. On a GPU, for a dtype that stays and contiguous
    rows, through mamba.cpp's tiled transpose (coalesced on both sides); otherwise through torch."""
    if (t.is_cuda and t.dtype == dtype and t.element_size() in (2, 4) and t.stride(2) == 1 and t.shape[0] <= 65535
            and _core._scan_cuda_built()):
        out = _torch.empty(t.shape[0], t.shape[2], t.shape[1], dtype=dtype, device=t.device)
        if out.numel():
            with _torch.cuda.device(t.device):
                _core._transpose(out.data_ptr(), t.data_ptr(), t.shape[0], t.shape[1], t.shape[2], t.element_size(),
                                 t.stride(0), t.stride(1), _stream(t.device))
        return out
    return t.transpose(1, 2).to(dtype).contiguous()


def _token_major(t, dtype):
    """(batch, X, seqlen) or (batch, 1, X, seqlen) -> (batch, seqlen, X), contiguous in dtype."""
    if t.dim() == 4:
        t = t[:, 0]
    return _swapped(t, dtype)


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _stream(device):
    if device.type != "cuda":
        return 0
    return _torch.cuda.current_stream(device).cuda_stream


class SelectiveScanFn(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False):
        batch, dim, seqlen, dstate = _check(u, delta, A, B, C, D, z, delta_bias)
        device = u.device
        cuda = device.type == "cuda"
        in_dtype = u.dtype
        # The CPU scan computes in fp32: other dtypes go through it converted.
        work = u.dtype if cuda else _torch.float32
        ut, dt = _token_major(u, work), _token_major(delta, work)
        Bt, Ct = _token_major(B, work), _token_major(C, work)
        zt = None if z is None else _token_major(z, work)
        A_, D_ = A.contiguous(), None if D is None else D.contiguous()
        bias = None if delta_bias is None else delta_bias.contiguous()
        y = _torch.empty_like(ut)
        last = _torch.empty(batch, dim, dstate, dtype=_torch.float32, device=device)
        # The states every chunk of steps are for the backward alone: a forward that no gradient will
        # follow (inference, torch.no_grad) skips them, B x seqlen/chunk x dim x dstate floats written.
        chunks = None
        if any(ctx.needs_input_grad[:8]):
            chunk = _core._scan_state_chunk(cuda)
            chunks = _torch.empty(batch, (seqlen + chunk - 1) // chunk, dim, dstate, dtype=_torch.float32,
                                  device=device)
        code = _DTYPES[work]
        workspace = None
        if cuda:
            nbytes = _core._scan_forward_workspace(batch, seqlen, dim, dstate, code, D_ is not None, zt is not None,
                                                   bias is not None, bool(delta_softplus))
            workspace = _torch.empty(max(nbytes, 1), dtype=_torch.uint8, device=device)
        with _torch.cuda.device(device) if cuda else _nullcontext():
            _core._scan_forward(cuda, batch, seqlen, dim, dstate, code, _ptr(y), _ptr(ut), _ptr(dt), _ptr(A_),
                                _ptr(Bt), _ptr(Ct), _ptr(D_), _ptr(zt), _ptr(bias), bool(delta_softplus),
                                _ptr(last), _ptr(chunks), _ptr(workspace), _stream(device))
        ctx.save_for_backward(ut, dt, A_, Bt, Ct, D_, zt, bias, chunks)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.shapes = (batch, dim, seqlen, dstate)
        ctx.in_dtype = in_dtype
        ctx.bc_dims = (B.dim(), C.dim())
        out = _swapped(y, in_dtype)
        if return_last_state:
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *rest):
        ut, dt, A_, Bt, Ct, D_, zt, bias, chunks = ctx.saved_tensors
        batch, dim, seqlen, dstate = ctx.shapes
        device = ut.device
        cuda = device.type == "cuda"
        work = ut.dtype
        dlast = rest[0] if rest and rest[0] is not None else None
        if dlast is not None:
            dlast = dlast.to(_torch.float32).contiguous()
        dyt = _swapped(dout, work)
        du, ddelta = _torch.empty_like(ut), _torch.empty_like(dt)
        dz = None if zt is None else _torch.empty_like(zt)
        dB, dC = _torch.empty_like(Bt), _torch.empty_like(Ct)
        dA = _torch.zeros_like(A_)
        dD = None if D_ is None else _torch.zeros_like(D_)
        dbias = None if bias is None else _torch.zeros_like(bias)
        code = _DTYPES[work]
        workspace = None
        if cuda:
            nbytes = _core._scan_backward_workspace(batch, seqlen, dim, dstate, code, D_ is not None, zt is not None,
                                                    bias is not None, ctx.delta_softplus, dlast is not None)
            workspace = _torch.empty(max(nbytes, 1), dtype=_torch.uint8, device=device)
        with _torch.cuda.device(device) if cuda else _nullcontext():
            _core._scan_backward(cuda, batch, seqlen, dim, dstate, code, _ptr(ut), _ptr(dt), _ptr(A_), _ptr(Bt),
                                 _ptr(Ct), _ptr(D_), _ptr(zt), _ptr(bias), ctx.delta_softplus, _ptr(chunks),
                                 _ptr(dyt), _ptr(dlast), _ptr(du), _ptr(ddelta), _ptr(dz), _ptr(dB), _ptr(dC),
                                 _ptr(dA), _ptr(dD), _ptr(dbias), _ptr(workspace), _stream(device))
        in_dtype = ctx.in_dtype

        def back(t, dims):  # (batch, seqlen, X) -> the argument's layout and dtype
            t = _swapped(t, in_dtype)
            return t.unsqueeze(1) if dims == 4 else t

        return (back(du, 3), back(ddelta, 3), dA, back(dB, ctx.bc_dims[0]), back(dC, ctx.bc_dims[1]), dD,
                None if dz is None else back(dz, 3), dbias, None, None)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm's selective_scan_fn on mamba.cpp's kernels: out (batch, dim, seqlen) in u's dtype, and
    with return_last_state the final state (batch, dim, dstate) float32.

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  out_t = (C_t h_t + D u_t) * silu(z_t),
    delta = softplus(delta + delta_bias) when delta_softplus.
    """
    return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
