"""GP classification with CVI natural-gradient steps, and hyperparameters learned from the sites.

Part 1 infers q(u) of a Bernoulli SVGP with fixed hyperparameters in two ways, CVI steps
(Khan & Lin, 2017; ``cvi_step`` with lr = 1) and Adam on q's Cholesky parameters, and plots
the ELBO against the step.  Part 2 learns the kernel by the hybrid scheme of Li, John & Solin
(2023): alternate a few CVI steps (inference, hyperparameters fixed) with Adam steps on the
hyperparameters that hold the dual parameters (sites) fixed, maximizing either the ELBO at
``q(sites, theta)`` (``dual_elbo``) or the EP-like objective (``ep_objective``), and compares
held-out NLPD and accuracy.  The figure shows the ELBO traces and both predictive maps.

Run: ``python examples/gp_cvi.py [--quick] [--out DIR]``; the last line printed is a JSON object
of headline metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vitorch.models import gp  # noqa: E402
from vitorch.models.gp import cvi  # noqa: E402


def make_data(n: int, g: torch.Generator):
    x = torch.rand(n, 2, generator=g) * 4 - 2
    f = 2.5 * torch.sin(1.5 * x[:, 0]) * torch.cos(1.2 * x[:, 1]) + 0.5 * x[:, 1]
    return x, (f + 0.7 * torch.randn(n, generator=g) > 0).double()


def model_for(z, n, lengthscale=1.0, variance=1.0):
    kernel = gp.RBF(lengthscale=torch.full((2,), lengthscale), variance=variance)
    return gp.SVGP(kernel, z, gp.BernoulliLogit(), num_data=n, learn_inducing=False)


def inference_race(x, y, z, steps: int) -> dict:
    """ELBO after each step: CVI (lr = 1) against Adam on q, same model, same fixed kernel."""
    traces = {}
    model = model_for(z, len(x), 0.7, 2.0)
    traces["CVI (lr = 1)"] = []
    for _ in range(steps):
        cvi.cvi_step(model, x, y, lr=1.0)
        with torch.no_grad():
            traces["CVI (lr = 1)"].append(float(model.full_data_elbo(x, y)))
    model = model_for(z, len(x), 0.7, 2.0)
    opt = torch.optim.Adam(model.variational_parameters(), lr=0.05)
    traces["Adam (lr = 0.05)"] = []
    for _ in range(steps * 20):
        opt.zero_grad()
        (-model.full_data_elbo(x, y)).backward()
        opt.step()
        with torch.no_grad():
            traces["Adam (lr = 0.05)"].append(float(model.full_data_elbo(x, y)))
    return traces


def hybrid(x, y, z, objective: str, rounds: int, m_steps: int) -> gp.SVGP:
    """Li, John & Solin (2023): CVI for q, then hyperparameter steps with the sites held fixed."""
    model = model_for(z, len(x))
    opt = torch.optim.Adam(model.hyperparameters(), lr=0.05)
    for _ in range(rounds):
        for _ in range(3):
            cvi.cvi_step(model, x, y, lr=1.0)
        sites = cvi.site_parameters(model, x, y)  # the dual parameters, fixed during the M-step
        for _ in range(m_steps):
            opt.zero_grad()
            if objective == "ep":
                loss = -cvi.ep_objective(model, x, y, sites)
            else:
                loss = -cvi.dual_elbo(model, x, y, sites)
            loss.backward()
            opt.step()
        model.set_q(cvi.q_from_sites(model, x, sites))  # q follows the new hyperparameters
    for _ in range(5):
        cvi.cvi_step(model, x, y, lr=1.0)
    return model


def evaluate(model, xt, yt) -> dict:
    with torch.no_grad():
        p = model.predict_proba(xt)
        nlpd = float(gp.nlpd(model.log_predictive(xt, yt)))
        acc = float(((p > 0.5).double() == yt).double().mean())
    return {"nlpd": nlpd, "accuracy": acc, "lengthscale": model.kernel.lengthscale.detach().tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", type=Path, default=Path("outputs") / Path(__file__).stem)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    n, m, rounds, m_steps = (200, 16, 4, 5) if args.quick else (500, 32, 25, 10)
    x, y = make_data(n, g)
    xt, yt = make_data(2000, g)
    z = gp.kmeans(x, m, generator=g)

    traces = inference_race(x, y, z, steps=6 if args.quick else 10)
    results = {name: hybrid(x, y, z, name, rounds, m_steps) for name in ("elbo", "ep")}
    scores = {name: evaluate(model, xt, yt) for name, model in results.items()}
    for name, s in scores.items():
        ell = ", ".join(f"{v:.3f}" for v in s["lengthscale"])
        print(f"M-step on {name:4s}: test NLPD {s['nlpd']:.4f}, accuracy {s['accuracy']:.3f}, lengthscales [{ell}]")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, trace in traces.items():
        axes[0].plot(range(1, len(trace) + 1), trace, label=name)
    best = max(max(t) for t in traces.values())
    axes[0].set_ylim(best - 60, best + 5)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("step"), axes[0].set_ylabel("ELBO")
    axes[0].set_title("Inference with fixed kernel: CVI vs Adam", fontsize=9)
    axes[0].legend(fontsize=8)
    gg = torch.linspace(-2, 2, 100)
    grid = torch.stack(torch.meshgrid(gg, gg, indexing="xy"), -1).reshape(-1, 2)
    for ax, (name, model) in zip(axes[1:], results.items()):
        with torch.no_grad():
            prob = model.predict_proba(grid).reshape(100, 100)
        ax.imshow(prob, origin="lower", extent=(-2, 2, -2, 2), cmap="RdBu_r", vmin=0, vmax=1)
        ax.contour(gg, gg, prob, levels=[0.5], colors="k", linewidths=1)
        ax.scatter(x[:, 0], x[:, 1], c=y, s=5, cmap="RdBu_r", edgecolors="k", linewidths=0.2)
        label = "EP-like objective" if name == "ep" else "ELBO"
        ax.set_title(f"hyperparameters by {label}: test NLPD {scores[name]['nlpd']:.3f}", fontsize=9)
    suffix = " (quick smoke run)" if args.quick else ""
    fig.suptitle(f"Bernoulli SVGP, N = {n}, M = {m}{suffix}")
    fig.tight_layout()
    fig.savefig(args.out / "cvi_classification.png", dpi=110)
    plt.close(fig)
    adam = traces["Adam (lr = 0.05)"]
    cvi_final = traces["CVI (lr = 1)"][-1]
    adam_steps = next((i + 1 for i, v in enumerate(adam) if v >= cvi_final - 0.1), None)
    metrics = {
        "N": n,
        "M": m,
        "cvi_elbo": cvi_final,
        "cvi_steps": len(traces["CVI (lr = 1)"]),
        "adam_steps_to_cvi_elbo_minus_0.1": adam_steps,
        "elbo_mstep_test_nlpd": scores["elbo"]["nlpd"],
        "ep_mstep_test_nlpd": scores["ep"]["nlpd"],
        "elbo_mstep_accuracy": scores["elbo"]["accuracy"],
        "ep_mstep_accuracy": scores["ep"]["accuracy"],
    }
    print(json.dumps({**metrics, "quick_smoke_run_not_converged": args.quick}))


if __name__ == "__main__":
    main()
