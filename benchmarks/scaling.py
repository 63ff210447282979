"""How cost grows: time per step against data size N, particles K and dimension D.

Three workloads, each swept along its axes with the others held at a middle value, each size
timed against the same step written by hand in torch (the ``torch`` peer), so every line is
also a ratio:

* ``core``: ``vt.loss`` + backward on the amortized linear-Gaussian model of
  ``benchmarks/core.py`` (IWAE, reparameterization), against batch N, particles K and
  latent/data dimension D;
* ``svgp``: one SVGP training step (Gaussian likelihood, Adam) against the minibatch size N and
  the number of inducing points M;
* ``vae``: one IWAE training step of the MLP VAE (784-200-200-50, Bernoulli decoder) against K
  and the batch size.

Each sweep ends with a line ``{"bench": "scaling", "fit": ...}`` giving the log-log slope of
time against the swept size over its upper half (``time ~ size^slope``): 1 is linear growth,
below 1 means fixed per-call costs still dominate, 3 is the cubic cost of a Cholesky factor.
``--plot FILE`` draws every sweep.

    python benchmarks/scaling.py --threads 1 --cpu-time [--quick] [--plot docs/assets/scaling.png]
"""

from __future__ import annotations

import json
import math

import torch
from torch.nn import functional as F

import vitorch as vt
from vitorch.models import gp, vae

from _harness import clock_name, interleaved_medians, parser, report, setup
from core import Model, torch_step
from core import vitorch_step as core_step

BENCH = "scaling"


def sweep_core(axis: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    rows = []
    for size in sizes:
        n, k, d = {"N": (size, 8, 32), "K": (128, size, 32), "D": (128, 8, size)}[axis]
        torch.manual_seed(0)
        model, x = Model(d), torch.randn(n, d)
        t = interleaved_medians(
            {"vitorch": core_step(model, x, k, vt.objectives.iwae, vt.estimators.reparam),
             "torch": torch_step(model, x, k, "iwae")}, repeats)  # fmt: skip
        report(BENCH, f"core iwae N={n} K={k} D={d}", t["vitorch"], "torch", t["torch"], axis=axis, size=size,
               workload="core", clock=clock_name())  # fmt: skip
        rows.append((size, t["vitorch"], t["torch"]))
    return rows


def _svgp_steps(n: int, m: int, d: int = 4):
    torch.manual_seed(0)
    x, z = torch.rand(n, d) * 4 - 2, torch.rand(m, d) * 4 - 2
    y = torch.sin(x).sum(-1) + 0.1 * torch.randn(n)
    model = gp.SVGP(gp.RBF(torch.ones(d)), z, gp.GaussianLikelihood(noise=0.1), num_data=100 * n)
    opt = torch.optim.Adam(model.parameters(), 1e-2)

    def ours():
        opt.zero_grad(set_to_none=True)
        model((x, y)).loss.backward()
        opt.step()

    # The same whitened SVGP by hand: q(v) = N(m, S S^T), f = K_xz L^-T v, Gaussian expected log-lik.
    log_ls, log_var, log_noise = (torch.zeros(d, requires_grad=True), torch.zeros((), requires_grad=True),
                                  torch.tensor(math.log(0.1), requires_grad=True))  # fmt: skip
    zz = z.clone().requires_grad_(True)
    q_m, q_s = torch.zeros(m, requires_grad=True), torch.eye(m).requires_grad_(True)
    hand_opt = torch.optim.Adam([log_ls, log_var, log_noise, zz, q_m, q_s], 1e-2)

    def rbf(a, b):
        return log_var.exp() * torch.exp(-0.5 * torch.cdist(a / log_ls.exp(), b / log_ls.exp()).pow(2))

    def hand():
        hand_opt.zero_grad(set_to_none=True)
        l_mm = torch.linalg.cholesky(rbf(zz, zz) + 1e-6 * torch.eye(m))
        a = torch.linalg.solve_triangular(l_mm, rbf(zz, x), upper=False)  # [m, n]
        s = torch.tril(q_s)
        mean = a.T @ q_m
        var = log_var.exp() - a.pow(2).sum(0) + (s.T @ a).pow(2).sum(0)
        noise = log_noise.exp()
        ell = -0.5 * (math.log(2 * math.pi) + noise.log() + ((y - mean).pow(2) + var) / noise)
        kl = 0.5 * (s.pow(2).sum() + q_m.pow(2).sum() - m - 2 * s.diagonal().abs().log().sum())
        (-(ell.mean() - kl / (100 * n))).backward()
        hand_opt.step()

    return ours, hand


def sweep_svgp(axis: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    rows = []
    for size in sizes:
        n, m = (size, 64) if axis == "N" else (256, size)
        ours, hand = _svgp_steps(n, m)
        t = interleaved_medians({"vitorch": ours, "torch": hand}, repeats)
        report(BENCH, f"svgp step batch={n} M={m}", t["vitorch"], "torch", t["torch"], axis=axis, size=size,
               workload="svgp", clock=clock_name())  # fmt: skip
        rows.append((size, t["vitorch"], t["torch"]))
    return rows


def _vae_steps(batch: int, k: int, d: int = 784):
    torch.manual_seed(0)
    x = torch.rand(batch, d).round()
    model = vae.VAE.mlp(d, objective=vt.objectives.iwae, num_particles=k)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    enc, dec = model.encoder, model.decoder

    def ours():
        opt.zero_grad(set_to_none=True)
        model(x).loss.backward()
        opt.step()

    hand_opt = torch.optim.Adam(model.parameters(), 1e-3)

    def hand():  # the same networks, the IWAE step written directly
        hand_opt.zero_grad(set_to_none=True)
        q = enc(x)
        loc, scale = q.loc, q.scale
        eps = torch.randn(k, *loc.shape)
        z = loc + scale * eps
        logits = dec(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        # log p(z) - log q(z | x): the 2-pi constants cancel
        log_w = log_lik - 0.5 * z.pow(2).sum(-1) + 0.5 * eps.pow(2).sum(-1) + scale.log().sum(-1)
        (-(torch.logsumexp(log_w, 0) - math.log(k)).mean()).backward()
        hand_opt.step()

    return ours, hand


def sweep_vae(axis: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
    rows = []
    for size in sizes:
        batch, k = (size, 5) if axis == "N" else (64, size)
        ours, hand = _vae_steps(batch, k)
        t = interleaved_medians({"vitorch": ours, "torch": hand}, repeats)
        report(BENCH, f"vae iwae step batch={batch} K={k}", t["vitorch"], "torch", t["torch"], axis=axis,
               size=size, workload="vae", clock=clock_name())  # fmt: skip
        rows.append((size, t["vitorch"], t["torch"]))
    return rows


def slope(rows: list[tuple[int, float, float]], col: int = 1) -> float:
    """Least-squares slope of log time against log size over the upper half of the sweep."""
    top = rows[len(rows) // 2 :] if len(rows) >= 4 else rows
    xs, ys = [math.log(r[0]) for r in top], [math.log(r[col]) for r in top]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--plot", default=None, help="write a figure of every sweep to this PNG")
    p.add_argument("--replot", default=None, help="only redraw --plot from this results file (JSON lines)")
    args = p.parse_args()
    if args.replot:
        return replot(args.replot, args.plot)
    setup(args)
    repeats = args.repeats or (3 if args.quick else 15)
    grid = lambda full, quick: quick if args.quick else full  # noqa: E731
    sweeps = {
        ("core", "N"): (sweep_core, grid([16, 64, 256, 1024, 4096], [16, 64])),
        ("core", "K"): (sweep_core, grid([1, 4, 16, 64, 256, 1024], [1, 8])),
        ("core", "D"): (sweep_core, grid([4, 16, 64, 256, 1024], [4, 16])),
        ("svgp", "N"): (sweep_svgp, grid([64, 256, 1024, 4096, 16384], [64, 256])),
        ("svgp", "M"): (sweep_svgp, grid([16, 64, 128, 256, 512, 1024], [16, 32])),
        ("vae", "N"): (sweep_vae, grid([16, 64, 256, 1024], [8, 16])),
        ("vae", "K"): (sweep_vae, grid([1, 5, 20, 50, 200], [1, 2])),
    }
    results = {}
    for (workload, axis), (fn, sizes) in sweeps.items():
        rows = fn(axis, sizes, repeats)
        results[(workload, axis)] = rows
        fit = {"vitorch": slope(rows, 1), "torch": slope(rows, 2)}
        print(json.dumps({"bench": BENCH, "workload": workload, "axis": axis, "fit": "log-log slope, upper half",
                          "vitorch_slope": round(fit["vitorch"], 3), "torch_slope": round(fit["torch"], 3),
                          "sizes": sizes}), flush=True)  # fmt: skip
    if args.plot:
        plot(results, args.plot, clock_name(), args.quick)


def plot(results: dict, path: str, clock: str, quick: bool = False) -> None:
    """One log-log panel per sweep, vitorch beside the step written by hand."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(12, 6))
    for ax, ((workload, axis), rows) in zip(axes.flat, results.items()):
        sizes = [r[0] for r in rows]
        ax.loglog(sizes, [r[1] for r in rows], "o-", label="vitorch")
        ax.loglog(sizes, [r[2] for r in rows], "s--", label="torch by hand")
        ax.set_title(f"{workload}: time per step vs {axis}" + (" (quick)" if quick else ""), fontsize=10)
        ax.set_xlabel(axis)
        ax.set_ylabel(f"seconds ({clock})", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def replot(jsonl: str, path: str) -> None:
    """Redraw the figure from a results file (``python benchmarks/scaling.py --replot FILE --plot PNG``)."""
    results, clock = {}, "wall"
    for line in open(jsonl):
        row = json.loads(line)
        if "size" in row:
            results.setdefault((row["workload"], row["axis"]), []).append(
                (row["size"], row["vitorch_s"], row["peer_s"])
            )
            clock = row.get("clock", clock)
    plot(results, path, clock)


if __name__ == "__main__":
    main()
