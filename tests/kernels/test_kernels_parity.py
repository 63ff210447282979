"""Triton kernels against their torch references (TESTING.md family 21).

Run on the CPU with ``TRITON_INTERPRET=1 python -m pytest -m triton tests/kernels``;
on a CUDA machine the ``cuda`` cases (marker ``gpu``) run the compiled kernels.
Sizes 1, 7, 127 and 1000 appear in the dimension each kernel tiles; the odd sizes
use non-contiguous (stride-2) inputs.  See ``kernel_parity.py`` for the tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not importable; kernel parity tests need it (pip install vitorch[gpu])")

from kernel_parity import DEVICES, SIZES, check, require_device, strided  # noqa: E402

from vitorch import kernels as vk  # noqa: E402
from vitorch.kernels.gamma import reference as gamma_ref  # noqa: E402
from vitorch.kernels.gaussian import draw_seed  # noqa: E402
from vitorch.kernels.gaussian import reference as gauss_ref  # noqa: E402

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _layout(n: int) -> bool:
    """Contiguous inputs for sizes 1 and 1000, stride-2 views for 7 and 127."""
    return n in (1, 1000)


# ---------------------------------------------------------------- 1. diagonal Gaussian


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("stop", [False, True], ids=["plain", "stopped"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 7), (3, 127, 5), (2, 3, 1000), (2, 1000, 3)])
def test_parity_diag_normal_rsample_and_log_prob(device, dtype, stop, shape):
    require_device(device)
    K, B, D = shape
    contiguous = B % 2 == 0 or B in (1, 1000)
    loc = strided(torch.randn(B, D), dtype, device, contiguous)
    scale = strided(torch.rand(B, D) + 0.3, dtype, device, contiguous)
    seed = 1234

    def kernel(loc, scale):
        torch.manual_seed(seed)  # the kernel's seed comes from torch's generator
        return vk.diag_normal_rsample_and_log_prob(loc, scale, (K,), stop_log_q=stop, backend="triton")

    torch.manual_seed(seed)
    from vitorch.kernels.gaussian.triton import noise

    eps = noise(draw_seed(), K, B, D, torch.device(device)).cpu()

    def reference(loc, scale):
        return gauss_ref.rsample_and_log_prob_from_noise(loc, scale, eps.to(loc.dtype), stop)

    check(kernel, reference, {"loc": loc, "scale": scale}, ["loc", "scale"], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_diag_normal_kernel_noise_is_standard_normal(device):
    """The in-kernel noise: DKWM bound on its CDF, and no correlation between neighbours."""
    require_device(device)
    from scipy.stats import norm

    from vitorch.kernels.gaussian.triton import noise

    eps = noise(99, 4, 50, 25, torch.device(device)).double().cpu().flatten()  # N = 5000
    n = eps.numel()
    alpha = 2e-7  # the two-sided level matching Z = 5.2
    dkwm = math.sqrt(math.log(2 / alpha) / (2 * n))  # ~0.054 at N = 5000
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    cdf = torch.as_tensor(norm.cdf(eps.sort().values.numpy()))
    assert (ecdf - cdf).abs().max().item() < dkwm
    corr = (eps[1:] * eps[:-1]).mean().item()  # standard error 1/sqrt(n)
    assert abs(corr) < 5.2 / math.sqrt(n)
    # Same seed, same noise; another seed, other noise.
    again = noise(99, 4, 50, 25, torch.device(device)).double().cpu().flatten()
    assert torch.equal(eps, again)
    assert not torch.equal(eps, noise(100, 4, 50, 25, torch.device(device)).double().cpu().flatten())


# ---------------------------------------------------------------- 2. likelihoods and weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n", SIZES)
def test_parity_bernoulli_log_lik(device, dtype, n):
    require_device(device)
    B, D = (3, n) if n != 127 else (n, 9)
    c = _layout(n)
    x = strided(torch.rand(B, D).round(), dtype, device, c)
    logits = strided(3 * torch.randn(2, B, D), dtype, device, c)
    check(
        lambda x, logits: vk.bernoulli_log_lik(x, logits, backend="triton"),
        lambda x, logits: vk.bernoulli_log_lik(x, logits, backend="reference"),
        {"x": x, "logits": logits}, ["x", "logits"], dtype,
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scale_shape", ["full", "event"])
def test_parity_gaussian_log_lik(device, dtype, n, scale_shape):
    require_device(device)
    B, D = (3, n) if n != 127 else (n, 9)
    c = _layout(n)
    x = strided(torch.randn(B, D), dtype, device, c)
    mean = strided(torch.randn(2, B, D), dtype, device, c)
    s_shape = (2, B, D) if scale_shape == "full" else (D,)
    scale = strided(torch.rand(s_shape) + 0.5, dtype, device, c)
    check(
        lambda x, mean, scale: vk.gaussian_log_lik(x, mean, scale, backend="triton"),
        lambda x, mean, scale: vk.gaussian_log_lik(x, mean, scale, backend="reference"),
        {"x": x, "mean": mean, "scale": scale}, ["x", "mean", "scale"], dtype,
    )  # fmt: skip


def _log_w(K: int, N: int, dtype, device, contiguous: bool) -> torch.Tensor:
    lw = 30 * torch.randn(K, N)
    lw[:, 0] = -math.inf  # a datum whose particles all have zero weight
    if K > 1:
        lw[0, -1] = -math.inf  # one impossible particle beside possible ones
    if K > 2 and N > 2:
        lw[:, 1] = 1e4 + torch.randn(K)  # large log-weights
    if not contiguous:
        # Particles first but batch-major storage: the layout a transposed [N, K] result has.
        return lw.to(dtype).to(device).T.contiguous().T
    return lw.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("K", SIZES)
def test_parity_logsumexp(device, dtype, K):
    require_device(device)
    N = 1000 if K == 1 else 5
    lw = _log_w(K, N, dtype, device, _layout(K))
    check(
        lambda lw: vk.logsumexp(lw, backend="triton"),
        lambda lw: vk.logsumexp(lw, backend="reference"),
        {"lw": lw}, ["lw"], dtype,
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("K", SIZES)
def test_parity_normalized_weights(device, dtype, K):
    require_device(device)
    N = 1000 if K == 1 else 5
    lw = _log_w(K, N, dtype, device, _layout(K))
    check(
        lambda lw: vk.normalized_weights(lw, backend="triton"),
        lambda lw: vk.normalized_weights(lw, backend="reference"),
        {"lw": lw}, [], dtype, differentiable=[False, False],
    )  # fmt: skip
    w, _ = vk.normalized_weights(lw, backend="triton")
    assert torch.all(w[:, 0] == 0)  # the all -inf datum: zero weights, not NaN


# ---------------------------------------------------------------- 3. MMD


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
# n = 67 spans three 32-row tiles with a ragged last one; the pairwise cost grows as n^2,
# which is what the Triton interpreter pays for.
@pytest.mark.parametrize("n", [2, 7, 67])
def test_parity_mmd(device, dtype, kernel, n):
    require_device(device)
    c = n != 7
    z_q = strided(torch.randn(2, n, 3), dtype, device, c)
    z_p = strided(torch.randn(n + 3, 3) + 0.5, dtype, device, c)
    z_p[1] = z_p[0]  # coinciding points: finite gradient

    def run(backend):
        return lambda z_q, z_p: vk.mmd(z_q, z_p, kernel, [0.5, 2.0], backend=backend)

    check(run("triton"), run("reference"), {"z_q": z_q, "z_p": z_p}, ["z_q", "z_p"], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_parity_mmd_large_event(device):
    """Many rows and an event of 1000 > MAX_D: the kernel takes the rows, the event goes to torch.

    1000 rows on CUDA; 200 (seven 32-row tiles, the last ragged) under the interpreter, whose
    cost grows with the number of row pairs.
    """
    require_device(device)
    z_q = torch.randn(1000 if device == "cuda" else 200, 4, device=device, dtype=torch.float32)
    z_p = torch.randn(40, 4, device=device, dtype=torch.float32)
    check(
        lambda z_q, z_p: vk.mmd(z_q, z_p, "imq", 1.0, backend="triton"),
        lambda z_q, z_p: vk.mmd(z_q, z_p, "imq", 1.0, backend="reference"),
        {"z_q": z_q, "z_p": z_p}, ["z_q", "z_p"], torch.float32,
    )  # fmt: skip
    with pytest.raises(vk.KernelUnavailableError, match="D = 1000 exceeds"):
        vk.mmd(torch.randn(3, 1000, device=device), torch.randn(3, 1000, device=device), backend="triton")


# ---------------------------------------------------------------- 4. Gamma (RSVI)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("boost", [0, 1, 3])
@pytest.mark.parametrize("n", SIZES)
def test_parity_log_standard_gamma(device, boost, n):
    require_device(device)
    grid = torch.tensor([1e-3, 0.1, 0.7, 1.0, 2.5, 30.0, 1e4])
    alpha = grid.repeat(n // 7 + 1)[:n].to(device)
    seed = 4321

    def kernel(alpha):
        torch.manual_seed(seed)
        return vk.log_standard_gamma(alpha, boost, backend="triton")

    torch.manual_seed(seed)
    from vitorch.kernels.gamma.triton import augmentation_log_u

    log_u = augmentation_log_u(draw_seed(), n, boost, torch.device(device)).cpu()
    _, eps, _ = kernel(alpha)
    eps = eps.cpu()

    def reference(alpha):
        log_x = gamma_ref.log_standard_gamma_from_noise(alpha, boost, eps.to(alpha.dtype), log_u.to(alpha.dtype))
        return log_x, eps.to(alpha.dtype), torch.zeros_like(eps, dtype=torch.int64)

    # Proposal counts are bookkeeping, not compared with a reference (the reference draws none).
    def kernel_values(alpha):
        log_x, e, _ = kernel(alpha)
        return log_x, e, torch.zeros_like(e, dtype=torch.int64)

    check(kernel_values, reference, {"alpha": alpha}, ["alpha"], torch.float32, differentiable=[True, False, False])


@pytest.mark.parametrize("device", DEVICES)
def test_log_standard_gamma_kernel_bad_shapes_give_nan_not_a_hang(device):
    require_device(device)
    alpha = torch.tensor([0.5, 0.0, -1.0, math.nan, 3.0], dtype=torch.float64, device=device)
    log_x, _, _ = vk.log_standard_gamma(alpha, 0, backend="triton")
    assert torch.isfinite(log_x[[0, 4]]).all() and torch.isnan(log_x[1:4]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nan_log_weights_propagate(device):
    """NaN is a bug to report: the clamp lets it through, in its column only, as the reference does."""
    require_device(device)
    lw = torch.randn(5, 3, device=device, dtype=torch.float32)
    lw[2, 1] = math.nan
    lse = vk.logsumexp(lw, backend="triton").cpu()
    assert torch.isnan(lse[1]) and torch.isfinite(lse[[0, 2]]).all()
    assert torch.isnan(vk.logsumexp(lw, backend="reference")[1])


@pytest.mark.parametrize("device", DEVICES)
def test_log_standard_gamma_kernel_draws_are_gamma(device):
    """DKWM on the kernel's draws at a small and a large shape, and accepted noise inside the support."""
    require_device(device)
    from scipy.stats import gamma

    n = 4000
    alpha2 = 2e-7  # the two-sided level matching Z = 5.2
    dkwm = math.sqrt(math.log(2 / alpha2) / (2 * n))
    for a, boost in [(0.3, 1), (4.0, 0)]:
        alpha = torch.full((n,), a, dtype=torch.float64, device=device)
        log_x, eps, props = vk.log_standard_gamma(alpha, boost, backend="triton")
        x = log_x.exp().cpu().sort().values
        ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
        assert (ecdf - torch.as_tensor(gamma(a).cdf(x.numpy()))).abs().max().item() < dkwm
        a_eff = a + max(boost, 1 if a < 1 else 0)
        assert bool((1 + eps / math.sqrt(9 * a_eff - 3) > 0).all())
        assert bool((props >= 1).all())


# ---------------------------------------------------------------- 5. planar stack


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n", SIZES)
def test_parity_planar_stack(device, dtype, n):
    require_device(device)
    N, D, L = (n, 5, 4) if n != 127 else (9, n, 3)
    c = _layout(n)
    u = 0.5 * torch.randn(L, D)
    w = 0.5 * torch.randn(L, D)
    wu = (w * u).sum(-1, keepdim=True)
    # vitorch.flows.Planar's u_hat, which keeps u^T w > -1 (Rezende & Mohamed, appendix A.1).
    u = u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True)
    inputs = {
        "x": strided(torch.randn(2, N, D), dtype, device, c),
        "u": strided(u, dtype, device, c),
        "w": strided(w, dtype, device, c),
        "b": (0.5 * torch.randn(L)).to(dtype).to(device),
    }
    check(
        lambda x, u, w, b: vk.planar_stack(x, u, w, b, backend="triton"),
        lambda x, u, w, b: vk.planar_stack(x, u, w, b, backend="reference"),
        inputs, ["x", "u", "w", "b"], dtype,
    )  # fmt: skip
