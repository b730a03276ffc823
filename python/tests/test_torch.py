"""mambacpp.torch.selective_scan_fn: mamba_ssm's signature and layouts over our kernels. On the CPU it
is checked here against a float64 reference written from the paper's equations (outputs, final state
and every gradient); on a CUDA GPU against the CPU path and, when importable, mamba_ssm itself."""

import itertools

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import mambacpp  # noqa: E402
from mambacpp.torch import selective_scan_fn  # noqa: E402


def scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = (C_t . h_t + D u_t) * silu(z_t) (paper sec. 3,
    Algorithm 2), step by step in the inputs' dtype. u, delta, z (b, d, l); B, C (b, n, l); A (d, n)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(b, d, l, n, seed, with_D, with_z, with_bias, grouped=False, softplus=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32)  # noqa: E731
    t = {
        "u": r(b, d, l),
        # delta is a step size: positive after the softplus, or given positive without it.
        "delta": 0.5 * r(b, d, l) - 1.0 if softplus else 0.05 + 0.2 * torch.rand(b, d, l, generator=g),
        "A": -torch.exp(0.5 * r(d, n)),
        "B": r(b, 1, n, l) if grouped else r(b, n, l),
        "C": r(b, 1, n, l) if grouped else r(b, n, l),
        "D": r(d) if with_D else None,
        "z": r(b, d, l) if with_z else None,
        "delta_bias": 0.3 * r(d) if with_bias else None,
    }
    return t


CASES = [
    # b, d, l, n, D, z, bias, softplus, grouped
    (1, 1, 1, 1, False, False, False, False, False),
    (2, 5, 7, 4, True, True, True, True, False),
    (2, 16, 67, 16, True, False, True, True, False),
    (1, 3, 130, 8, False, True, False, False, True),
    (3, 8, 200, 16, True, True, True, True, True),
]


@pytest.mark.parametrize("case", CASES)
def test_cpu_forward_and_gradients_match_the_reference(case):
    b, d, l, n, with_D, with_z, with_bias, softplus, grouped = case
    x = make_inputs(b, d, l, n, seed=b * 100 + l, with_D=with_D, with_z=with_z, with_bias=with_bias, grouped=grouped,
                    softplus=softplus)
    names = [k for k, v in x.items() if v is not None]
    ours = {k: x[k].clone().requires_grad_(True) for k in names}
    ref = {k: x[k].double().requires_grad_(True) for k in names}
    args = lambda t: {k: t.get(k) for k in x}  # noqa: E731

    y, last = selective_scan_fn(**args(ours), delta_softplus=softplus, return_last_state=True)
    ref_in = dict(args(ref))
    if grouped:
        ref_in["B"], ref_in["C"] = ref["B"][:, 0], ref["C"][:, 0]
    y_ref, last_ref = scan_reference(**ref_in, delta_softplus=softplus)
    assert y.shape == (b, d, l) and y.dtype == torch.float32 and y.is_contiguous()
    assert last.shape == (b, d, n) and last.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last.double(), last_ref, rtol=1e-4, atol=1e-5)

    gen = torch.Generator().manual_seed(7)
    dy = torch.randn(b, d, l, generator=gen)
    dlast = torch.randn(b, d, n, generator=gen)
    grads = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), [ours[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * dy.double()).sum() + (last_ref * dlast.double()).sum(),
                                    [ref[k] for k in names])
    for k, got, want in zip(names, grads, grads_ref):
        assert got.shape == ours[k].shape, k
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-4 * max(scale, 1.0), msg=k)


def test_output_only_and_bf16_on_the_cpu():
    x = make_inputs(2, 4, 33, 8, seed=3, with_D=True, with_z=True, with_bias=True)
    y = selective_scan_fn(**x, delta_softplus=True)
    y_ref, _ = scan_reference(**{k: (v.double() if v is not None else None) for k, v in x.items()},
                              delta_softplus=True)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-5)
    half = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    yb = selective_scan_fn(**half, delta_softplus=True)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.double(), y_ref, rtol=5e-2, atol=5e-2)
    # Non-contiguous views are read as they are (the kernels get a token-major copy).
    u_t = x["u"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_t.is_contiguous()
    torch.testing.assert_close(selective_scan_fn(**{**x, "u": u_t}, delta_softplus=True), y, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_forward_without_gradients_equals_one_with(device):
    # Without a gradient to follow, the forward skips the chunk states kept for the backward: the output and
    # the last state must not change by a bit, and a forward with gradients must still go backward.
    if device == "cuda" and not cuda_ready():
        pytest.skip("needs a CUDA GPU and a build with the CUDA kernels")
    x = make_inputs(2, 24, 150, 16, seed=5, with_D=True, with_z=True, with_bias=True)
    x = {k: (v.to(device) if v is not None else None) for k, v in x.items()}
    with torch.no_grad():
        y0, last0 = selective_scan_fn(**x, delta_softplus=True, return_last_state=True)
    xg = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    y1, last1 = selective_scan_fn(**xg, delta_softplus=True, return_last_state=True)
    assert torch.equal(y0, y1.detach()) and torch.equal(last0, last1.detach())
    du, = torch.autograd.grad(y1.sum(), [xg["u"]])
    assert du.shape == x["u"].shape and torch.isfinite(du).all()


def test_bad_arguments_name_the_argument():
    x = make_inputs(2, 4, 5, 3, seed=1, with_D=True, with_z=True, with_bias=True)

    def call(**changes):
        selective_scan_fn(**{**x, **changes}, delta_softplus=True)

    with pytest.raises(TypeError, match="u: expected a torch.Tensor"):
        call(u=[1, 2, 3])
    with pytest.raises(TypeError, match="u: dtype torch.float64"):
        call(u=x["u"].double())
    with pytest.raises(TypeError, match="delta: dtype"):
        call(delta=x["delta"].half())
    with pytest.raises(ValueError, match="delta: expected shape"):
        call(delta=x["delta"][:, :, :4])
    with pytest.raises(ValueError, match="u: expected 3 dimensions"):
        call(u=x["u"][0])
    with pytest.raises(TypeError, match="A: dtype"):
        call(A=x["A"].double())
    with pytest.raises(TypeError, match="A: complex"):
        call(A=torch.complex(x["A"], x["A"]))
    with pytest.raises(ValueError, match="A: expected shape"):
        call(A=x["A"][:3])
    with pytest.raises(ValueError, match="B: expected shape"):
        call(B=x["B"].transpose(1, 2))
    with pytest.raises(ValueError, match="C: groups = 2"):
        call(C=torch.cat([x["C"][:, None], x["C"][:, None]], dim=1))
    with pytest.raises(ValueError, match="B: expected .*constant"):
        call(B=torch.randn(4, 3))
    with pytest.raises(TypeError, match="D: dtype"):
        call(D=x["D"].half())
    with pytest.raises(ValueError, match="delta_bias: expected shape"):
        call(delta_bias=x["delta_bias"][:2])
    with pytest.raises(ValueError, match="z: expected shape"):
        call(z=x["z"][:1])
    with pytest.raises(ValueError, match="B: is on meta"):
        call(B=x["B"].to("meta"))
    with pytest.raises(ValueError, match="u: has an empty dimension"):
        call(u=x["u"][:, :, :0], delta=x["delta"][:, :, :0], z=None, B=x["B"][:, :, :0], C=x["C"][:, :, :0])
    with pytest.raises(mambacpp.Error, match="d_state"):
        n = 300
        call(A=-torch.ones(4, n), B=torch.randn(2, n, 5), C=torch.randn(2, n, 5))


def cuda_ready():
    return torch.cuda.is_available() and mambacpp._core._scan_cuda_built()


@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and a build with the CUDA kernels")
@pytest.mark.parametrize("dtype,case", list(itertools.product([torch.float32, torch.bfloat16], CASES[1:])))
def test_cuda_matches_the_cpu_and_mamba_ssm(dtype, case):
    b, d, l, n, with_D, with_z, with_bias, softplus, grouped = case
    x = make_inputs(b, d, l, n, seed=l, with_D=with_D, with_z=with_z, with_bias=with_bias, grouped=grouped,
                    softplus=softplus)
    names = [k for k, v in x.items() if v is not None]
    low = ("u", "delta", "B", "C", "z")
    cpu = {k: x[k].clone().requires_grad_(True) for k in names}
    gpu = {k: (x[k].to(dtype) if k in low else x[k]).cuda().requires_grad_(True) for k in names}
    y_cpu = selective_scan_fn(**{k: cpu.get(k) for k in x}, delta_softplus=softplus)
    y_gpu = selective_scan_fn(**{k: gpu.get(k) for k in x}, delta_softplus=softplus)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(y_gpu.float().cpu(), y_cpu.detach(), **tol)
    dy = torch.randn_like(y_cpu)
    g_cpu = torch.autograd.grad((y_cpu * dy).sum(), [cpu[k] for k in names])
    g_gpu = torch.autograd.grad((y_gpu.float() * dy.cuda()).sum(), [gpu[k] for k in names])
    for k, a, c in zip(names, g_gpu, g_cpu):
        scale = max(c.abs().max().item(), 1.0)
        torch.testing.assert_close(a.float().cpu(), c, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=k)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as official
    except ImportError:
        return
    y_off = official(**{k: gpu.get(k) for k in x}, delta_softplus=softplus)
    torch.testing.assert_close(y_gpu.float(), y_off.float(), **tol)


@pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA GPU and a build with the CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_transpose_equals_torchs(dtype):
    from mambacpp.torch import _swapped
    g = torch.Generator(device="cuda").manual_seed(3)
    for b, r, c in [(1, 1, 1), (2, 33, 65), (3, 64, 32), (2, 1000, 7), (1, 5, 2049)]:
        x = torch.randn(b, r, c + 3, device="cuda", generator=g).to(dtype)[:, :, 1:c + 1]  # rows c + 3 apart
        assert x.stride(1) == c + 3
        assert torch.equal(_swapped(x, dtype), x.transpose(1, 2).contiguous())
        four = torch.randn(b, 2, r, c, device="cuda", generator=g).to(dtype)[:, 1]  # a group of (b, g, n, l)
        assert torch.equal(_swapped(four, dtype), four.transpose(1, 2).contiguous())
    # Even strides and row counts on aligned storage: 2-byte types go through the paired kernel, here with
    # partial tiles on both sides and an odd column count (its last column alone).
    for b, r, c, pad in [(2, 98, 130, 4), (1, 2, 2050, 2), (2, 130, 5, 1), (4, 66, 63, 1)]:
        x = torch.randn(b, r, c + pad, device="cuda", generator=g).to(dtype)[:, :, :c]
        assert torch.equal(_swapped(x, dtype), x.transpose(1, 2).contiguous())
