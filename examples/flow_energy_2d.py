"""Normalizing flows on the 2-D energies U1-U4 of Rezende & Mohamed (2015).

Each target is ``p(z) = exp(-U(z)) / Z``.  We fit planar flows of length 2, 8 and 32
(Rezende & Mohamed's family, on a learned diagonal-Gaussian base; each longer flow
starts from the shorter one's fit with exact-identity layers appended, and the
2-layer flow keeps the best of three annealed restarts, since the reverse KL is
mode-seeking and a fresh deep flow often settles in a worse local optimum, e.g. one
of U1's two modes) and one stronger
flow (six rational-quadratic spline coupling layers, Durkan et al. 2019) by reverse
KL: ascend the ELBO ``E_q[-U(z) - log q(z)]`` with sticking-the-landing gradients
(Roeder et al., 2017) through ``vt.loss``.  STL evaluates log q at stopped parameters,
which for a flow is ``log_prob`` through the inverse: planar layers invert by a
Newton solve with implicit gradients, coupling layers in closed form.  As in the
paper, the energy is annealed, ``beta`` rising from 0.01 to 1 over the first half of
training, which lets the flow spread over every mode before the target sharpens; while
``beta < 1`` the fraction ``1 - beta`` of a soft box ``(z1/4)^8 + (z2/4)^8`` keeps the
flattened target inside the plotted square (without it, the wide early flow meets
the steep envelope below later and its gradients explode).

``log Z`` of each target comes from quadrature on a 0.01-spaced grid over
``[-7, 7]^2`` (the integrand is smooth and negligible at the edges, so the Riemann sum
is accurate far beyond the Monte Carlo error; the script prints the change from a
grid twice as coarse).  The gap ``log Z - ELBO = KL(q || p) >= 0`` is how far each flow
is from the target; longer flows should reach a tighter bound.

U2-U4 are constant along ``z1`` and so not normalizable on the plane (REFERENCES.md);
we multiply them by the flat-topped envelope ``exp(-(z1 / 4)^8)``, which leaves the
familiar pictures on ``[-4, 4]^2`` and makes ``Z`` finite.  U1 is used as published.

    python examples/flow_energy_2d.py [--quick] [--out outputs/flow_energy_2d]

Writes ``densities.png`` (targets and fitted densities) and prints one line per fit
and a final JSON line of headline metrics.

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015), sec. 6.1, table 1.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

import vitorch as vt
from vitorch import flows

# ---------------------------------------------------------------- the targets


def _w1(z):
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def _envelope(z):
    return (z[..., 0] / 4) ** 8


def _box(z):
    # Keeps the annealed targets exp(-beta U - (1 - beta) box) inside [-4, 4]^2 (roughly)
    # while beta is small; it vanishes at beta = 1.
    return (z[..., 0] / 4) ** 8 + (z[..., 1] / 4) ** 8


def u1(z):
    r = z.norm(dim=-1)
    ring = 0.5 * ((r - 2) / 0.4) ** 2
    modes = torch.logaddexp(-0.5 * ((z[..., 0] - 2) / 0.6) ** 2, -0.5 * ((z[..., 0] + 2) / 0.6) ** 2)
    return ring - modes


def u2(z):
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2 + _envelope(z)


def u3(z):
    w2 = 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + w2) / 0.35) ** 2
    return -torch.logaddexp(a, b) + _envelope(z)


def u4(z):
    w3 = 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + w3) / 0.35) ** 2
    return -torch.logaddexp(a, b) + _envelope(z)


TARGETS = {"U1": u1, "U2": u2, "U3": u3, "U4": u4}


def log_z_by_quadrature(u, half_width=7.0, step=0.01) -> float:
    """``log int exp(-U) dz`` by a Riemann sum on a square grid (float64)."""
    g = torch.arange(-half_width, half_width + step / 2, step, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    return float(torch.logsumexp(-u(zz).flatten(), 0) + 2 * math.log(step))


# ---------------------------------------------------------------- the flows


def planar_flow(length: int) -> flows.ConditionalFlow:
    return flows.ConditionalFlow([flows.ElementwiseAffine(2)] + [flows.Planar(2) for _ in range(length)])


def identity_planar(dim: int = 2) -> flows.Planar:
    """A planar layer that is exactly the identity but has nonzero gradients.

    With ``u = log(e - 1) w / |w|^2`` the paper's constraint map gives ``u_hat = 0``
    (since ``-1 + softplus(log(e - 1)) = 0``), so ``y = x``; ``dy/du_hat = tanh(w^T x + b)``
    is not zero, so training moves it.
    """
    t = flows.Planar(dim)
    with torch.no_grad():
        p = t.params.params
        w = p[dim : 2 * dim]
        p[:dim] = math.log(math.e - 1) * w / w.pow(2).sum()
    return t


def grow(module: flows.ConditionalFlow, length: int) -> flows.ConditionalFlow:
    """A longer planar flow that starts as ``module`` (new identity layers appended)."""
    old = list(module.transforms)
    return flows.ConditionalFlow(old + [identity_planar() for _ in range(length - (len(old) - 1))])


def spline_flow(layers: int = 6) -> flows.ConditionalFlow:
    stack = [flows.ElementwiseAffine(2)]
    stack += [flows.SplineCoupling(2, hidden=(64, 64), swap=bool(i % 2), bins=8, bound=6.0) for i in range(layers)]
    return flows.ConditionalFlow(stack)


def fit(u, module: flows.ConditionalFlow, steps: int, particles: int, lr: float, anneal: bool = True) -> list[float]:
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    warm = max(steps // 2, 1)
    trace = []
    for step in range(steps):
        beta = min(1.0, 0.01 + 0.99 * step / warm) if anneal else 1.0
        out = vt.loss(
            lambda z, b=beta: -(b * u(z) + (1 - b) * _box(z)),
            module(),
            num_particles=particles,
            estimator=vt.estimators.stl,
        )
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
        opt.step()
        sched.step()
        trace.append(float(out.bound))
    return trace


@torch.no_grad()
def final_elbo(u, module, n: int) -> tuple[float, float]:
    """ELBO and its standard error from ``n`` fresh samples at ``beta = 1``."""
    z, log_q = module().rsample_and_log_prob((n,))
    terms = -u(z) - log_q
    return float(terms.mean()), float(terms.std() / math.sqrt(n))


@torch.no_grad()
def importance_log_z(u, module, n: int) -> float:
    """``log (1/n) sum exp(-U(z) - log q(z))``: an importance-sampled estimate of log Z (the IWAE bound)."""
    z, log_q = module().rsample_and_log_prob((n,))
    return float(torch.logsumexp(-u(z) - log_q, 0) - math.log(n))


# ---------------------------------------------------------------- figure


def plot(results, modules, out_dir: pathlib.Path, grid_half=4.0, n=200, suptitle=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.linspace(-grid_half, grid_half, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    names = list(next(iter(modules.values())))
    fig, axes = plt.subplots(len(modules), 1 + len(names), figsize=(2.2 * (1 + len(names)), 2.2 * len(modules)))
    for row, target in enumerate(modules):
        u = TARGETS[target]
        panels = [("target", (-u(zz)).exp())]
        with torch.no_grad():
            for name in names:
                log_q = modules[target][name]().log_prob(zz.reshape(-1, 2))
                panels.append((name, log_q.reshape(n, n).exp()))
        for col, (title, dens) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(dens.T.numpy(), origin="lower", extent=[-grid_half, grid_half] * 2, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(target)
            label = title if col == 0 else f"{title}\nELBO {results[target][title]['elbo']:.3f}"
            ax.set_title(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = out_dir / "densities.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run (few steps)")
    p.add_argument("--out", default="outputs/flow_energy_2d", help="where the figure goes")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per fit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    # float64: near-singular planar layers make float32 log-determinants (and with them
    # the importance weights) inaccurate; on CPU the small ops here cost the same.
    torch.set_default_dtype(torch.float64)
    steps = args.steps or (40 if args.quick else 1200)
    particles = 64 if args.quick else 128
    restarts = 1 if args.quick else 3
    n_eval = 2000 if args.quick else 40_000
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Each longer planar flow starts from the shorter one's fit plus identity layers
    # (and no second annealing), so the comparison measures what the extra layers add
    # rather than which local optimum of the reverse KL a fresh start falls into.
    makers = {
        "planar-2": (lambda prev: planar_flow(2), 1e-2, True),
        "planar-8": (lambda prev: grow(prev, 8), 5e-3, False),
        "planar-32": (lambda prev: grow(prev, 32), 5e-3, False),
        "spline-coupling-6": (lambda prev: spline_flow(6), 3e-3, True),
    }
    results, modules = {}, {}
    t_start = time.perf_counter()
    # The smoke run fits two of the four targets (the two-mode ring U1 and the split wave U3).
    targets = {t: TARGETS[t] for t in (("U1", "U3") if args.quick else TARGETS)}
    for target, u in targets.items():
        log_z = log_z_by_quadrature(u)
        coarse = log_z_by_quadrature(u, step=0.02)
        results[target], modules[target] = {"log_z": log_z}, {}
        print(f"{target}: log Z = {log_z:.5f} by quadrature (coarse-grid change {abs(log_z - coarse):.1e})")
        module = None
        for name, (make, lr, anneal) in makers.items():
            t0 = time.perf_counter()
            # Reverse KL is mode-seeking: the shortest flow (which the longer ones grow
            # from) keeps the best of a few annealed restarts; the others train once.
            candidates = []
            for _ in range(restarts if name == "planar-2" else 1):
                candidate = make(module)
                fit(u, candidate, steps, particles, lr, anneal)
                candidates.append((final_elbo(u, candidate, n_eval)[0], candidate))
            module = max(candidates, key=lambda c: c[0])[1]
            elbo, se = final_elbo(u, module, n_eval)
            iw = importance_log_z(u, module, n_eval)
            results[target][name] = {"elbo": elbo, "elbo_se": se, "kl_gap": log_z - elbo, "is_log_z": iw}
            modules[target][name] = module
            print(
                f"  {name:18s} ELBO {elbo:8.4f} +- {se:.4f}   log Z - ELBO {log_z - elbo:7.4f}   "
                f"IS log Z {iw:8.4f}   ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    smoke = f"Flows fitted by reverse KL, {steps} steps per fit (quick smoke run)" if args.quick else None
    path = plot(results, modules, out_dir, suptitle=smoke)
    planar = ["planar-2", "planar-8", "planar-32"]
    tighter = {t: all(r[a]["elbo"] <= r[b]["elbo"] for a, b in zip(planar, planar[1:])) for t, r in results.items()}
    print(f"wrote {path}")
    metrics = {
        "log_z": {t: round(r["log_z"], 5) for t, r in results.items()},
        "elbo": {t: {k: round(v["elbo"], 4) for k, v in r.items() if k != "log_z"} for t, r in results.items()},
        "longer_planar_is_tighter": tighter,
        "steps": steps,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
