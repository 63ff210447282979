"""Train the VAE zoo's recipes under one budget and tabulate test log-likelihood, ELBO, KL and active units.

In the spirit of the IWAE paper's Table 1 (Burda et al., 2016) and Rainforth et al.'s
comparisons (2018): the same 784-200-200-50 MLP (tanh, Bernoulli decoder), the same
dynamically binarized training images, the same number of optimizer steps and the
same seed for VAE, β-VAE, IWAE (K = 5, 50), IWAE-DReG, MIWAE, PIWAE, CIWAE, InfoVAE,
VIS and a VAE with an IAF posterior.  Every model is scored on the test set (binarized
at 0.5) by the IWAE bound at ``--ll-particles``, with the ELBO, KL and active units
from the same draws.

    python examples/vae_compare.py --data fashion-mnist --epochs 1 --json rows.json
    python examples/vae_compare.py --quick                               # digits, tiny budget

Writes the table (markdown) to ``--table`` (default ``vae_comparison.md`` under ``--out``),
``comparison.png`` to ``--out`` and, with ``--json``, the rows and settings; the last line of
output is a JSON object of each model's test log-likelihood.  ``docs/vae_comparison.md`` is
written from such JSON files (its text says which run produced which row).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch

from vae import load_data  # examples/vae.py, next to this script
from vitorch.models import vae as zoo
from vitorch.training import NonFiniteError, fit


def recipes(big_k: int, steps: int = 469) -> dict[str, tuple[str, dict]]:
    """Row name -> (recipe, its arguments).  Multi-sample rows share ``big_k`` particles per image.

    ``latent_dim=None`` in a row's arguments: the recipe sets its own latent code (the
    categorical ones), ``--latent`` is not passed.
    """
    m = 5 if big_k % 5 == 0 else 1
    half = max(1, steps // 2)
    return {
        "VAE": ("vae", {}),
        "beta-VAE (beta=4)": ("beta_vae", dict(beta=4.0)),
        "IWAE K=5": ("iwae", dict(K=5)),
        f"IWAE K={big_k}": ("iwae", dict(K=big_k)),
        f"IWAE-DReG K={big_k}": ("iwae_dreg", dict(K=big_k)),
        f"MIWAE M={m} K={big_k // m}": ("miwae", dict(M=m, K=big_k // m)),
        f"PIWAE M={m} K={big_k // m}": ("piwae", dict(M=m, K=big_k // m)),
        f"CIWAE beta=0.5 K={big_k}": ("ciwae", dict(beta=0.5, K=big_k)),
        "InfoVAE (alpha=0, lambda=1000)": ("info_vae", dict(alpha=0.0, lam=1000.0)),
        f"VIS K={big_k}": ("vis", dict(K=big_k)),
        "IAF posterior (2 steps)": ("iaf_vae", dict(num_flows=2)),
        "Unscented AE (all 2D+1 sigma points, W2)": ("unscented_ae", {}),
        "Unscented AE (1 random sigma point, W2)": ("unscented_ae", dict(num_sigma_points=1)),
        f"Silent VAE (annealed over {half} steps)": ("silent_vae", dict(anneal_steps=half)),
        "Gumbel-softmax 30x10": ("gumbel_vae", dict(num_latents=30, num_classes=10, latent_dim=None)),
        "Gumbel-softmax ST 30x10": (
            "gumbel_vae",
            dict(num_latents=30, num_classes=10, straight_through=True, latent_dim=None),
        ),
        "Enumerated 2x5 (exact)": ("enumerated_vae", dict(num_latents=2, num_classes=5, latent_dim=None)),
        "ARD-VAE": ("ard_vae", {}),
        "Inverse-Lipschitz decoder (L=1)": ("inverse_lipschitz_vae", dict(lipschitz=1.0)),
    }


def encoder_grad_variance(model, batch, repeats: int, seed: int) -> dict[str, float]:
    """Spread of the encoder's gradient of the training loss over ``repeats`` draws at fixed parameters and data.

    Returns ``{"trace": sum of per-coordinate variances, "relative": trace / ||mean gradient||^2}``.
    The model runs in eval mode, so that no schedule (annealing, the ARD prior) moves.
    """
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    rng = torch.get_rng_state()  # restored after, so the training that follows draws what it would without this
    was_training = model.training
    model.eval()
    grads = []
    for r in range(repeats):
        torch.manual_seed(seed + r)
        model.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in encoder]))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    torch.set_rng_state(rng)
    g = torch.stack(grads).double()
    trace = float(g.var(0).sum())
    return {"trace": trace, "relative": trace / max(float(g.mean(0).pow(2).sum()), 1e-300)}


def table(rows: list[dict], args) -> str:
    lines = [
        "# VAE zoo comparison",
        "",
        f"Data: {args.data} (training images binarized dynamically; test images binarized at 0.5). "
        f"Model: {args.data_dim}-{'-'.join(map(str, args.hidden))}-{args.latent} MLP, tanh, Bernoulli decoder. "
        f"Budget: {args.steps} Adam steps (lr {args.lr}, batch {args.batch_size}) per model, seed {args.seed}. "
        f"Test metrics on {args.test_images} test images, IWAE bound with K = {args.ll_particles}; ELBO and KL "
        "from the same draws; active units: Cov_x E_q[z_u] > 0.01 (Burda et al., 2016); train s: wall-clock "
        "seconds on the machine that ran it, one thread (not comparable across machines). "
        "Generated by `python examples/vae_compare.py " + " ".join(args.argv) + "`.",
        "",
        "Encoder gradient variance: trace of the covariance of the encoder's gradient of the training loss "
        f"over {args.grad_repeats} draws on the first {args.batch_size} test images, at the seed-{args.seed} "
        "initial parameters and at the trained ones.",
        "",
        "| model | test log-likelihood | ELBO | KL | active units | skipped steps | train s "
        "| grad var (init) | grad var (trained) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['name']} | {r['failed']} | | | | | | | |")
            continue
        gv = r.get("grad_variance", {})
        lines.append(
            f"| {r['name']} | {r['log_likelihood']:.2f} | {r['elbo']:.2f} | {r['kl']:.2f} | "
            f"{r['active_units']} | {r['skipped_steps']} | {r['train_seconds']:.0f} | "
            f"{_fmt(gv.get('init'))} | {_fmt(gv.get('trained'))} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "" if v is None else f"{v['trace']:.3g}"


def write_json(path: pathlib.Path, rows: list[dict], args) -> None:
    """The finished rows with the settings that produced them (what the docs' table is built from)."""
    keys = ("data", "steps", "batch_size", "lr", "hidden", "latent", "big_k", "ll_particles", "test_images", "seed")
    keys += ("threads", "grad_repeats")
    payload = {
        "command": "python examples/vae_compare.py " + " ".join(args.argv),
        "settings": {k: getattr(args, k) for k in keys},
        "torch": torch.__version__,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def figure(rows: list[dict], path: pathlib.Path, title: str) -> None:
    """One row per model: the ELBO and the IWAE log-likelihood as two points joined by the gap."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.4 * len(rows) + 1.2))
    ax = fig.add_subplot()
    y = list(range(len(rows)))
    ll, elbo = [r["log_likelihood"] for r in rows], [r["elbo"] for r in rows]
    ax.hlines(y, elbo, ll, color="0.7")
    ax.plot(elbo, y, "o", label="test ELBO")
    ax.plot(ll, y, "s", label="test log-likelihood (IWAE)")
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("nats per image (higher is better)")
    ax.legend(loc="best")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["fashion-mnist", "digits"], default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=10, help="budget in epochs (converted to steps)")
    p.add_argument("--steps", type=int, default=None, help="budget in optimizer steps (overrides --epochs)")
    p.add_argument("--big-k", type=int, default=50, help="particles of the multi-sample rows")
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ll-particles", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--only", nargs="+", default=None, choices=sorted(zoo.RECIPES), help="recipes to run")
    p.add_argument("--rows", nargs="+", default=None, help="keep only rows whose name contains one of these")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grad-repeats", type=int, default=16, help="draws behind the encoder-gradient variance")
    p.add_argument(
        "--variance-at-init-only",
        action="store_true",
        help="only the encoder-gradient variance at the seed's initial parameters (no training, no test metrics)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--quick", action="store_true", help="digits, 25 steps of batch 64, K=10 rows, K=20 test")
    p.add_argument("--out", default="outputs/vae_compare")
    p.add_argument("--table", default=None, help="markdown file (default vae_comparison.md under --out)")
    p.add_argument("--json", default=None, help="also write the rows and the settings to this JSON file")
    p.add_argument(
        "--on-nonfinite",
        choices=["raise", "skip"],
        default="raise",
        help="a NaN/inf gradient ends that model's row (raise) or drops the step and counts it (skip)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if args.quick:
        # A smoke run: every row trains and is scored, briefly (CI runs it on every change).
        args.data, args.steps, args.big_k, args.ll_particles, args.test_images = "digits", 25, 10, 20, 64
        args.hidden, args.latent, args.grad_repeats, args.batch_size = [64], 8, 2, 64
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table_path = pathlib.Path(args.table or out / "vae_comparison.md")

    train, test, _ = load_data(args.data, quick=False)
    args.data_dim = train.dim
    test = test[: args.test_images]
    args.test_images = test.shape[0]
    steps = args.steps or args.epochs * -(-len(train) // args.batch_size)
    args.steps = steps
    probe = test[: args.batch_size]
    refit = train.tensor(generator=torch.Generator().manual_seed(args.seed))[:10000]
    rows = []
    for name, (recipe, kw) in recipes(args.big_k, steps).items():
        if args.only and recipe not in args.only:
            continue
        if args.rows and not any(part in name for part in args.rows):
            continue
        torch.manual_seed(args.seed)
        kw = {"latent_dim": args.latent, **kw}
        if kw["latent_dim"] is None:
            del kw["latent_dim"]
        model = zoo.RECIPES[recipe](train.dim, hidden=tuple(args.hidden), **kw)
        variance = {"init": encoder_grad_variance(model, probe, args.grad_repeats, args.seed + 2)}
        if args.variance_at_init_only:
            rows.append(dict(name=name, recipe=recipe, grad_variance=variance))
            print(f"{name:32s} encoder grad variance at init {variance['init']['trace']:.4g}", flush=True)
            if args.json:
                write_json(pathlib.Path(args.json), rows, args)
            continue
        t0 = time.perf_counter()
        try:
            history = fit(
                model,
                train,
                steps=steps,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                progress=False,
                on_nonfinite=args.on_nonfinite,
            )
        except NonFiniteError as err:  # reported in the table, never dropped silently
            print(f"{name:32s} stopped: {err}", flush=True)
            rows.append(dict(name=name, recipe=recipe, failed=str(err).split(";")[0]))
            continue
        seconds = time.perf_counter() - t0
        extra = {}
        if hasattr(model, "refit_prior"):  # ARD-VAE: the prior from 10,000 encoded training images
            model.refit_prior(refit)
            extra["relevant_dims"] = int(model.relevant_dims().sum())
        variance["trained"] = encoder_grad_variance(model, probe, args.grad_repeats, args.seed + 2)
        torch.manual_seed(args.seed + 1)
        metrics = zoo.evaluate(model, test, num_particles=args.ll_particles)
        rows.append(
            dict(
                name=name,
                recipe=recipe,
                train_seconds=seconds,
                skipped_steps=history.skipped,
                grad_variance=variance,
                **extra,
                **metrics,
            )
        )
        # Rewritten after every model, so a long run that is cut short keeps its finished rows.
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table_path.write_text(table(rows, args))
        if args.json:
            write_json(pathlib.Path(args.json), rows, args)
        print(
            f"{name:32s} LL {metrics['log_likelihood']:9.2f}  ELBO {metrics['elbo']:9.2f}  "
            f"KL {metrics['kl']:7.2f}  AU {metrics['active_units']:3d}  ({seconds:.0f} s)",
            flush=True,
        )
    if not rows:
        p.error(f"--only {args.only} selects none of the compared recipes")
    if args.variance_at_init_only:
        print(json.dumps({r["name"]: r["grad_variance"]["init"]["trace"] for r in rows}))
        return rows
    title = f"VAE zoo on {args.data}, {steps} Adam steps per model" + (" (quick smoke run)" if args.quick else "")
    figure([r for r in rows if "failed" not in r], out / "comparison.png", title)
    print(f"table: {table_path}; figure: {out / 'comparison.png'}")
    lls = {r["name"]: round(r["log_likelihood"], 3) if "failed" not in r else None for r in rows}
    print(json.dumps({**lls, "quick_smoke_run_not_converged": args.quick}))
    return rows


if __name__ == "__main__":
    main()
