"""Fused Triton kernels against torch eager and ``torch.compile`` of their references, on a GPU.

For every kernel (see ``docs/kernels.md``), at the sizes an IWAE VAE with K = 50
particles and batch 128 produces (latent D = 32, 784 pixels) and at 10x the batch:

* forward and forward+backward time of the kernel, of the eager reference and of
  ``torch.compile(reference)``, medians in one process (``ratio = peer_s / vitorch_s``);
* achieved bandwidth (bytes the kernel must read and write / time) beside a
  device-to-device copy measured in the same run (``copy_GBps``).

End to end: IWAE(K = 50) VAE training steps per second (encoder, fused sampling,
Bernoulli decoder likelihood, log-sum-exp) with the Triton kernels on (``backend="triton"``;
``"auto"`` never picks Triton) vs off (``backend="reference"``), and vs ``torch.compile`` of the eager step.

Without CUDA (or Triton) every case prints a line with ``"skipped"`` and its reason:
this benchmark was written on a machine without a GPU, so no results are committed.

    python benchmarks/kernels.py [--quick]
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vitorch import kernels as vk
from vitorch.kernels import dispatch

from _harness import interleaved_medians, parser, report, setup

BENCH = "kernels"
DEVICE = "cuda"
DEVICE_NAME = ""  # named on every result line, so a results file says which GPU it came from


def _copy_gbps(repeats: int) -> float:
    src = torch.empty((64 if DEVICE == "cuda" else 1) * 2**20, dtype=torch.float32, device=DEVICE)  # 256 MiB
    dst = torch.empty_like(src)
    t = interleaved_medians({"copy": lambda: dst.copy_(src)}, repeats)["copy"]
    return 2 * src.numel() * 4 / t / 1e9


def _cases(batch: int) -> list[tuple[str, callable, dict, int]]:
    """``(name, op, inputs, bytes moved by the forward)`` for one batch size; K = 50, latent 32, 784 pixels."""
    K, D, P, L = 50, 32, 784, 8
    f32 = dict(device=DEVICE, dtype=torch.float32)
    loc, scale = torch.randn(batch, D, **f32), torch.rand(batch, D, **f32) + 0.5
    x = torch.rand(batch, P, **f32).round()
    logits = torch.randn(K, batch, P, **f32)
    log_w = torch.randn(K, batch, **f32)
    z_q, z_p = torch.randn(batch, D, **f32), torch.randn(batch, D, **f32)
    alpha = torch.rand(K, batch, D, **f32) * 3 + 0.1
    u, w = 0.3 * torch.randn(L, D, **f32), 0.3 * torch.randn(L, D, **f32)
    zf, b = torch.randn(K * batch, D, **f32), torch.randn(L, **f32)
    n = 4  # bytes per float32
    return [
        ("diag_normal_rsample_and_log_prob",
         lambda loc, scale, backend: vk.diag_normal_rsample_and_log_prob(loc, scale, (K,), backend=backend),
         {"loc": loc, "scale": scale}, n * (2 * batch * D + K * batch * (D + 1))),
        ("bernoulli_log_lik", lambda x, logits, backend: vk.bernoulli_log_lik(x, logits, backend=backend),
         {"x": x, "logits": logits}, n * (batch * P + K * batch * P + K * batch)),
        ("gaussian_log_lik", lambda x, mean, backend: vk.gaussian_log_lik(x, mean, 0.5, backend=backend),
         {"x": x, "mean": logits}, n * (batch * P + K * batch * P + K * batch)),
        ("logsumexp", lambda log_w, backend: vk.logsumexp(log_w, backend=backend), {"log_w": log_w},
         n * (K * batch + batch)),
        ("mmd", lambda z_q, z_p, backend: vk.mmd(z_q, z_p, "imq", [0.5, 1.0, 2.0], backend=backend),
         {"z_q": z_q, "z_p": z_p}, n * 2 * batch * D),
        ("log_standard_gamma", lambda alpha, backend: vk.log_standard_gamma(alpha, 1, backend=backend)[0],
         {"alpha": alpha}, n * 4 * alpha.numel()),
        ("planar_stack", lambda z, u, w, b, backend: vk.planar_stack(z, u, w, b, backend=backend),
         {"z": zf, "u": u, "w": w, "b": b}, n * (2 * zf.numel() + K * batch * (L + 1))),
    ]  # fmt: skip


def _loss(outs) -> torch.Tensor:
    outs = outs if isinstance(outs, tuple) else (outs,)
    return sum(o.float().sum() for o in outs if o.is_floating_point() and o.requires_grad)


def _bench_case(name, op, inputs, nbytes, label, repeats, copy_gbps):
    grads = {k: v.detach().requires_grad_(v.is_floating_point() and k not in ("x",)) for k, v in inputs.items()}
    eager = lambda **kw: op(**kw, backend="torch")  # noqa: E731
    try:
        if DEVICE != "cuda":
            raise RuntimeError("torch.compile is not timed in a smoke run")
        compiled = torch.compile(eager)
        compiled(**inputs)
        compile_err = None
    except Exception as err:  # a compile failure is reported, not hidden
        compiled, compile_err = None, f"{type(err).__name__}: {err}"[:200]
    for mode in ("fwd", "fwd+bwd"):

        def run(fn, mode=mode):
            if mode == "fwd":
                with torch.no_grad():
                    return fn(**inputs)
            return _loss(fn(**grads)).backward()

        fns = {"triton": lambda: run(lambda **kw: op(**kw, backend="triton")), "eager": lambda: run(eager)}
        if compiled is not None:
            fns["compile"] = lambda: run(compiled)
        t = interleaved_medians(fns, repeats)
        case = f"{name} {mode} {label}"
        gbps = nbytes * (1 if mode == "fwd" else 2) / t["triton"] / 1e9  # backward reads about as much again
        extra = {"GBps": gbps, "copy_GBps": copy_gbps, "fraction_of_copy": gbps / copy_gbps, "device": DEVICE_NAME}
        report(BENCH, case, t["triton"], "torch eager", t["eager"], **extra)
        if compiled is not None:
            report(BENCH, case, t["triton"], "torch.compile", t["compile"], device=DEVICE_NAME)
        else:
            report(BENCH, case, t["triton"], "torch.compile", None, skipped=compile_err)


class _VAE(nn.Module):
    def __init__(self, p: int = 784, d: int = 32, h: int = 256):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(p, h), nn.Tanh(), nn.Linear(h, 2 * d))
        self.dec = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, p))

    def iwae_loss(self, x, K: int, backend: str) -> torch.Tensor:
        loc, pre = self.enc(x).chunk(2, -1)
        scale = F.softplus(pre) + 1e-4
        z, log_q = vk.diag_normal_rsample_and_log_prob(loc, scale, (K,), backend=backend)
        log_prior = -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))
        log_w = vk.bernoulli_log_lik(x, self.dec(z), backend=backend) + log_prior - log_q
        return -(vk.logsumexp(log_w, backend=backend) - math.log(K)).mean()


def _end_to_end(batch: int, repeats: int) -> None:
    model = _VAE().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(batch, 784, device=DEVICE).round()

    def step(backend, fn=None):
        opt.zero_grad(set_to_none=True)
        (fn or model.iwae_loss)(x, 50, backend).backward()
        opt.step()

    fns = {"on": lambda: step("triton"), "off": lambda: step("reference")}
    try:
        if DEVICE != "cuda":
            raise RuntimeError("torch.compile is not timed in a smoke run")
        compiled = torch.compile(model.iwae_loss)
        step("torch", compiled)
        fns["compile"] = lambda: step("torch", compiled)
    except Exception as err:
        report(BENCH, f"vae iwae K=50 B={batch} steps/s", None, "torch.compile", None, skipped=str(err)[:200])
    t = interleaved_medians(fns, repeats)
    case = f"vae iwae K=50 B={batch} step"
    report(
        BENCH, case, t["on"], "torch eager", t["off"],
        steps_per_s=1 / t["on"], peer_steps_per_s=1 / t["off"], device=DEVICE_NAME,
    )  # fmt: skip
    if "compile" in t:
        report(
            BENCH, case, t["on"], "torch.compile", t["compile"], peer_steps_per_s=1 / t["compile"], device=DEVICE_NAME
        )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="run the GPU code path on the CPU (needs TRITON_INTERPRET=1)")
    p.add_argument("--ops", nargs="*", default=None, help="only these kernels (default: every one)")
    args = p.parse_args()
    setup(args)
    repeats = args.repeats or (5 if args.quick else 50)
    batches = [128] if args.quick else [128, 1280]
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device on this machine (the benchmark was written without a GPU; no results committed)"
    else:
        ok, why = dispatch.triton_status()
        reason = None if ok else why
    if args.smoke:
        # The GPU code path, run on the CPU under the Triton interpreter: checks the script, times nothing useful.
        global DEVICE
        DEVICE, reason, batches, repeats = "cpu", None, [4], 1
    if reason:
        for batch in batches:
            for name in vk.OPS:
                for mode in ("fwd", "fwd+bwd"):
                    report(BENCH, f"{name} {mode} K=50 B={batch}", None, "torch eager", None, skipped=reason)
            report(BENCH, f"vae iwae K=50 B={batch} step", None, "torch eager", None, skipped=reason)
        return
    torch.backends.cuda.matmul.allow_tf32 = False  # the kernels compute in IEEE float32; so do their peers
    copy_gbps = _copy_gbps(repeats)
    global DEVICE_NAME
    DEVICE_NAME = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter smoke run)"
    for batch in batches:
        for name, op, inputs, nbytes in _cases(batch):
            if args.ops is not None and name not in args.ops:
                continue
            _bench_case(name, op, inputs, nbytes, f"K=50 B={batch}", repeats, copy_gbps)
        _end_to_end(batch, repeats)


if __name__ == "__main__":
    main()
