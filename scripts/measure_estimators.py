"""Measure bound gaps and guide-gradient noise on the linear-Gaussian model.

The numbers on ``docs/choosing.md`` come from this script.  The model is
``z ~ N(theta, I_D)``, ``x | z ~ N(z, I_D)``: its evidence ``log Z = log N(x; theta, 2 I)``
and posterior ``N((x + theta) / 2, I / 2)`` are exact, so every gap below is a gap to
the truth, not to another estimate.  The guide is Rainforth et al.'s (2018) set-up: a
diagonal Gaussian with variance 2/3 whose mean is the posterior mean plus a fixed
offset, so it is close to, but not equal to, the posterior.

Replicates are vectorized: the guide's parameters get a leading batch dimension of
``R`` identical copies, each copy draws its own particles, and because ``vt.loss``
averages over the batch the gradient with respect to copy ``r`` is ``1/R`` times
replicate ``r``'s own gradient.  One call therefore yields ``R`` independent
gradient draws.

Usage::

    python scripts/measure_estimators.py                 # prints the markdown tables
    python scripts/measure_estimators.py --out table.md  # also writes them to a file
    python scripts/measure_estimators.py --quick         # fewer replicates, for a smoke run
    python scripts/measure_estimators.py --figure docs/assets/bound_sandwich.png

References:
    Burda, Grosse & Salakhutdinov (2016); Rainforth et al. (2018), *Tighter
    Variational Bounds are Not Necessarily Better*; Roeder et al. (2017); Tucker et
    al. (2019); Mnih & Rezende (2016); Dieng et al. (2017); Li & Turner (2016).
"""

from __future__ import annotations

import argparse
import datetime
import math
import time

import torch

import vitorch as vt

LOG_2PI = math.log(2 * math.pi)
KS = (1, 4, 16, 64)
GUIDE_VAR = 2.0 / 3.0


def make_problem(dim: int, seed: int, offset: float):
    """Data, the model's log-joint, exact log Z and the guide's fixed parameters."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(dim)
    x = theta + math.sqrt(2.0) * torch.randn(dim, generator=g)  # a draw from the marginal N(theta, 2I)
    log_z = (-0.25 * (x - theta).pow(2) - 0.5 * math.log(2 * math.pi * 2.0)).sum()
    post_mean = (x + theta) / 2
    # A fixed offset keeps q away from the posterior, so the guide gradient has signal.
    loc = post_mean + offset * torch.randn(dim, generator=g)
    log_scale = torch.full((dim,), 0.5 * math.log(GUIDE_VAR))

    def log_joint(z):
        return (-0.5 * (z - theta).pow(2) - 0.5 * (x - z).pow(2) - LOG_2PI).sum(-1)

    return x, theta, log_z, log_joint, loc, log_scale


def exact_elbo_and_cubo2(x, theta, loc, log_scale):
    """Closed-form ELBO and CUBO_2 = 0.5 log E_q[w^2] for the guide N(loc, exp(log_scale)^2)."""
    s2 = (2 * log_scale).exp()
    elbo = (
        -0.5 * ((loc - theta).pow(2) + s2)
        - 0.5 * ((x - loc).pow(2) + s2)
        - LOG_2PI
        + 0.5 * torch.log(2 * math.pi * math.e * s2)
    ).sum()
    # E_q[w^2] = Z^2 * prod_d int post(z)^2 / q(z) dz; Gaussian integral, finite for s^2 > 1/4.
    mu, tau2 = (x + theta) / 2, torch.full_like(x, 0.5)
    a = 1 / tau2 - 1 / (2 * s2)
    b = mu / tau2 - loc / (2 * s2)
    c = -mu.pow(2) / tau2 + loc.pow(2) / (2 * s2)
    log_int = 0.5 * torch.log(2 * math.pi * s2) - torch.log(2 * math.pi * tau2) + 0.5 * torch.log(math.pi / a)
    log_z = (-0.25 * (x - theta).pow(2) - 0.5 * math.log(4 * math.pi)).sum()
    cubo2 = 0.5 * (2 * log_z + (log_int + b.pow(2) / a + c).sum())
    return elbo, cubo2


def bound_gaps(problem, reps: int):
    """Mean and standard error of ``bound - log Z`` for each objective and K."""
    x, theta, log_z, log_joint, loc, log_scale = problem
    q = vt.DiagNormal(loc.expand(reps, -1), log_scale.exp().expand(reps, -1))
    objectives = {
        "ELBO": vt.objectives.elbo,
        "IWAE": vt.objectives.iwae,
        "MIWAE(M=K/4)": None,  # built per K: M groups of 4 particles
        "CIWAE(β=0.5)": vt.objectives.ciwae(0.5),
        "Rényi(α=0.5)": vt.objectives.renyi(0.5),
        "CUBO₂ (upper)": vt.objectives.cubo(2),
    }
    rows = {}
    with torch.no_grad():
        for name, obj in objectives.items():
            for K in KS:
                if name.startswith("MIWAE"):
                    if K < 4:
                        continue
                    obj = vt.objectives.miwae(K // 4)
                bound = vt.loss(log_joint, q, num_particles=K, objective=obj).bound  # [reps]
                gap = bound - log_z
                rows[(name, K)] = (gap.mean().item(), gap.std().item() / math.sqrt(reps))
    elbo, cubo2 = exact_elbo_and_cubo2(x, theta, loc, log_scale)
    return rows, (elbo - log_z).item(), (cubo2 - log_z).item()


def estimator_cases():
    """(row label, objective, estimator factory); factories give fresh baseline state."""
    O, E = vt.objectives, vt.estimators
    out = []
    for oname, obj in (("ELBO", O.elbo), ("IWAE", O.iwae)):
        out += [
            (f"{oname} · reparam", obj, lambda: E.reparam),
            (f"{oname} · stl", obj, lambda: E.stl),
            (f"{oname} · dreg", obj, lambda: E.dreg),
            (f"{oname} · score", obj, lambda: E.score()),
            (f"{oname} · score + moving avg.", obj, lambda: E.score(E.MovingAverageBaseline(0.9))),
            (f"{oname} · vimco", obj, lambda: E.vimco),
        ]
    return out


def gradient_stats(problem, obj, est, K: int, reps: int, warmup: int):
    """Per-replicate guide gradients; returns (SNR of loc, SNR of log-scale, total variance, z vs exact)."""
    x, theta, log_z, log_joint, loc0, log_scale0 = problem
    loc = loc0.expand(reps, -1).clone().requires_grad_(True)
    log_scale = log_scale0.expand(reps, -1).clone().requires_grad_(True)

    def call():
        q = vt.DiagNormal(loc, log_scale.exp())
        return vt.loss(log_joint, q, num_particles=K, objective=obj, estimator=est).loss

    try:
        vt.check(vt.DiagNormal(loc0, log_scale0.exp()), K, obj, est)
    except ValueError as err:
        return str(err).split("\n  - ")[1]
    if getattr(est, "baseline", None) is not None:
        for _ in range(warmup):  # lets a moving-average baseline settle before measuring
            call()
    g_loc, g_ls = torch.autograd.grad(call(), (loc, log_scale))
    # loss = -mean_r(bound_r), so replicate r's ascent gradient is -R * d loss / d param_r.
    g = torch.cat([-reps * g_loc, -reps * g_ls], dim=-1)  # [R, 2D]
    mean, sd = g.mean(0), g.std(0)
    dim = loc0.shape[-1]
    snr = (mean.abs() / sd.clamp_min(1e-300)).nan_to_num(0.0)
    total_var = sd.pow(2).sum().item()
    z_exact = None
    if obj is vt.objectives.elbo:
        # The ELBO's gradient is exact: autograd of its closed form.
        lp = loc0.clone().requires_grad_(True)
        ls = log_scale0.clone().requires_grad_(True)
        elbo, _ = exact_elbo_and_cubo2(x, theta, lp, ls)
        exact = torch.cat(torch.autograd.grad(elbo, (lp, ls)))
        se = sd / math.sqrt(reps)
        z_exact = ((mean - exact).abs() / se.clamp_min(1e-300))[se > 0].max().item() if (se > 0).any() else 0.0
    return snr[:dim].mean().item(), snr[dim:].mean().item(), total_var, z_exact


def fmt_gap(m, se):
    return f"{m:+.3f} ± {se:.3f}"


def render(gaps, exact_elbo_gap, exact_cubo_gap, grads, args, offset, seconds):
    lines = [f"### Guide offset {offset:g}", ""]
    lines.append(
        f"Linear-Gaussian model, D = {args.dim}; guide N(posterior mean + δ, {GUIDE_VAR:.3g} I) with "
        f"δ ~ N(0, {offset:g}² I) drawn once; {args.reps} replicates per cell; seed {args.seed}; "
        f"{seconds:.0f} s on {torch.get_num_threads()} thread, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}."
    )
    lines.append("")
    lines.append("**Bound minus log Z** (mean ± standard error over replicates; closer to 0 is tighter):")
    lines.append("")
    lines.append("| objective | " + " | ".join(f"K = {K}" for K in KS) + " |")
    lines.append("| --- |" + " --- |" * len(KS))
    for name in dict.fromkeys(n for n, _ in gaps):
        cells = [fmt_gap(*gaps[(name, K)]) if (name, K) in gaps else "—" for K in KS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Exact values: ELBO − log Z = {exact_elbo_gap:+.3f} (= −KL(q ‖ posterior)); "
        f"true CUBO₂ − log Z = {exact_cubo_gap:+.3f}."
    )
    lines.append("")
    lines.append(
        "**Guide-gradient signal-to-noise** |E g| / sd(g), averaged over the D loc "
        "(and, after the slash, the D log-scale) coordinates; higher is better:"
    )
    lines.append("")
    lines.append("| objective · estimator | " + " | ".join(f"K = {K}" for K in KS) + " |")
    lines.append("| --- |" + " --- |" * len(KS))
    for label in dict.fromkeys(lab for lab, _ in grads):
        cells = []
        for K in KS:
            r = grads[(label, K)]
            cells.append("refused¹" if isinstance(r, str) else f"{r[0]:.2f} / {r[1]:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "**Total guide-gradient variance** (trace of the covariance over all 2D "
        "coordinates; lower is better), and for the ELBO the largest |z| of the mean "
        "gradient against the exact one (over 4 values of K × 2D coordinates an unbiased estimator rarely passes 4.5):"
    )
    lines.append("")
    lines.append("| objective · estimator | " + " | ".join(f"K = {K}" for K in KS) + " | max \\|z\\| vs exact (ELBO) |")
    lines.append("| --- |" + " --- |" * (len(KS) + 1))
    for label in dict.fromkeys(lab for lab, _ in grads):
        cells, zs = [], []
        for K in KS:
            r = grads[(label, K)]
            if isinstance(r, str):
                cells.append("refused¹")
            else:
                cells.append(f"{r[2]:.3g}")
                if r[3] is not None:
                    zs.append(r[3])
        z_cell = f"{max(zs):.1f}" if zs else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {z_cell} |")
    reasons = sorted({r for r in grads.values() if isinstance(r, str)})
    lines.append("")
    lines.append("¹ `vt.loss` refuses the combination before sampling: " + "; ".join(f"“{r}”" for r in reasons) + ".")
    return "\n".join(lines)


def plot_sandwich(panels, path):
    """One panel per guide offset: each bound's gap to log Z against K, with its exact references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.6, 3.4), squeeze=False)
    for ax, (offset, gaps, exact_elbo_gap, exact_cubo_gap) in zip(axes[0], panels):
        for name in dict.fromkeys(n for n, _ in gaps):
            ks = [K for K in KS if (name, K) in gaps]
            ax.errorbar(
                ks,
                [gaps[(name, K)][0] for K in ks],
                yerr=[2 * gaps[(name, K)][1] for K in ks],
                marker="o",
                ms=3,
                capsize=2,
                label=name,
            )
        ax.axhline(0.0, color="k", lw=1, label="log Z")
        ax.axhline(exact_elbo_gap, color="gray", ls="--", lw=1, label="exact ELBO")
        ax.axhline(exact_cubo_gap, color="gray", ls=":", lw=1, label="exact CUBO₂")
        ax.set_xscale("log", base=2)
        ax.set_xticks(KS, [str(K) for K in KS])
        ax.set_xlabel("K (particles)")
        ax.set_ylabel("bound − log Z (nats)")
        ax.set_title(f"guide offset {offset:g}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--reps", type=int, default=4000, help="independent replicates per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=20, help="calls that let a moving-average baseline settle")
    p.add_argument(
        "--offsets",
        default="0.5,0.05",
        help="comma-separated scales of the guide's offset from the posterior mean: one set of tables each",
    )
    p.add_argument("--quick", action="store_true", help="200 replicates, for a smoke run")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    p.add_argument("--figure", default=None, help="also plot the bound sandwich (PNG) to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.warmup = 200, 3
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    sections, panels = [], []
    for offset in (float(o) for o in args.offsets.split(",")):
        start = time.perf_counter()
        problem = make_problem(args.dim, args.seed, offset)
        gaps, exact_elbo_gap, exact_cubo_gap = bound_gaps(problem, args.reps)
        panels.append((offset, gaps, exact_elbo_gap, exact_cubo_gap))
        grads = {}
        for label, obj, make_est in estimator_cases():
            for K in KS:
                grads[(label, K)] = gradient_stats(problem, obj, make_est(), K, args.reps, args.warmup)
        seconds = time.perf_counter() - start
        sections.append(render(gaps, exact_elbo_gap, exact_cubo_gap, grads, args, offset, seconds))
    text = "\n\n".join(sections)
    print(text)
    if args.figure:
        plot_sandwich(panels, args.figure)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
