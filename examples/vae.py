"""Train a VAE on Fashion-MNIST (or scikit-learn's digits) with any objective and estimator.

The model is the MLP VAE of Burda et al. (2016) (784-200-200-50, tanh, Bernoulli decoder)
or a small convolutional one (``--arch conv``), with a diagonal-Gaussian or IAF posterior
(``--posterior iaf``).  Training uses dynamically binarized images and ``vt.fit``
(progress bar with the loss and bound, held-out bound each epoch); the test set is
binarized once (threshold 0.5) and scored by the IWAE bound at ``--ll-particles``
(5000 as in the paper), with the ELBO, the KL and the active units.

    python examples/vae.py --data fashion-mnist --objective iwae --estimator dreg -K 5 --epochs 10
    python examples/vae.py --recipe info_vae --data digits --quick
    python examples/vae.py --data fashion-mnist --compile --epochs 2    # the fused (compiled) step
    python examples/vae.py --data fashion-mnist --compile --bf16        # ... with bfloat16 matrix products

Writes ``metrics.json``, ``samples.png``, ``reconstructions.png`` and ``loss.png`` to
``--out`` (default ``outputs/vae/``); the last line of output is the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

import vitorch as vt
from vitorch.data import digits, fashion_mnist
from vitorch.models import vae as zoo
from vitorch.training import fit
from vitorch.training.compile import fused_adam

OBJECTIVES = {
    "elbo": lambda a: vt.objectives.elbo,
    "iwae": lambda a: vt.objectives.iwae,
    "miwae": lambda a: vt.objectives.miwae(a.M),
    "piwae": lambda a: vt.objectives.piwae(a.M),
    "ciwae": lambda a: vt.objectives.ciwae(a.beta),
    "renyi": lambda a: vt.objectives.renyi(a.alpha),
    "vis": lambda a: vt.objectives.vis(),
}
ESTIMATORS = {
    "reparam": lambda: vt.estimators.reparam,
    "stl": lambda: vt.estimators.stl,
    "dreg": lambda: vt.estimators.dreg,
    "score": lambda: vt.estimators.score(vt.estimators.MovingAverageBaseline()),
    "vimco": lambda: vt.estimators.vimco,
}


def load_data(name: str, quick: bool, dtype: torch.dtype | None = None):
    """``(train ImageData with dynamic binarization, test tensor binarized at 0.5, image side)``."""
    if name == "fashion-mnist":
        train = fashion_mnist("train", binarize="dynamic", dtype=dtype)
        test = fashion_mnist("test", binarize="fixed", dtype=dtype).images
        side = 28
    else:
        train = digits("train", binarize="dynamic", dtype=dtype)
        test = digits("test", binarize="fixed", dtype=dtype).images
        side = 8
    if quick and len(train) > 2000:
        train, test = train.subset(2000), test[:500]
    return train, test, side


def build(args, data_dim: int, side: int) -> zoo.VAE:
    """The model the command line asks for: a named recipe, or objective x estimator x K."""
    if args.recipe:
        shape = dict(image_shape=(1, side, side)) if args.arch == "conv" else dict(hidden=tuple(args.hidden))
        return zoo.RECIPES[args.recipe](data_dim, latent_dim=args.latent, **shape)
    options = dict(
        objective=OBJECTIVES[args.objective](args),
        estimator=ESTIMATORS[args.estimator](),
        num_particles=args.K,
        latent_dim=args.latent,
        posterior=args.posterior,
    )
    if args.arch == "conv":
        return zoo.VAE.conv((1, side, side), **options)
    return zoo.VAE.mlp(data_dim, hidden=tuple(args.hidden), **options)


def save_figures(model, history, test, side, out: pathlib.Path, suffix: str = "") -> None:
    from matplotlib.figure import Figure

    zoo.save_image_grid(
        str(out / "samples.png"), model.sample(64), (side, side), title="samples (decoder means)" + suffix
    )
    x = test[:32]
    pairs = torch.stack([x, model.reconstruct(x)], 1).reshape(64, -1)
    zoo.save_image_grid(
        str(out / "reconstructions.png"), pairs, (side, side), nrow=8, title="data | reconstruction" + suffix
    )
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    steps, losses = history.column("step"), history.column("loss")
    window = max(1, len(losses) // 50)
    smooth = torch.tensor(losses).unfold(0, window, 1).mean(1) if len(losses) >= window else torch.tensor(losses)
    ax.plot(steps[window - 1 :], smooth.tolist(), label=f"training loss ({window}-step mean)")
    if history.evals:
        ax.plot(
            history.column("step", evals=True),
            [-b for b in history.column("bound", evals=True)],
            "o-",
            label="held-out -bound",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("nats per image")
    ax.set_title("training loss" + suffix)
    ax.legend()
    fig.savefig(out / "loss.png", dpi=100, bbox_inches="tight")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["fashion-mnist", "digits"], default="digits")
    p.add_argument("--recipe", choices=sorted(zoo.RECIPES), default=None, help="overrides objective/estimator/K")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="iwae")
    p.add_argument("--estimator", choices=sorted(ESTIMATORS), default="reparam")
    p.add_argument("-K", type=int, default=5, help="particles per image in training")
    p.add_argument("-M", type=int, default=1, help="groups for miwae / piwae")
    p.add_argument("--beta", type=float, default=0.5, help="ciwae's beta")
    p.add_argument("--alpha", type=float, default=0.5, help="renyi's alpha")
    p.add_argument("--arch", choices=["mlp", "conv"], default="mlp")
    p.add_argument("--posterior", choices=["diag", "iaf", "dirichlet"], default="diag")
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ll-particles", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=1000, help="test images scored by the IWAE bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--quick", action="store_true", help="a small run: at most 2,000 images, 3 epochs, K=100 test")
    p.add_argument(
        "--compile",
        action="store_true",
        help="the fused path: torch.compile of the forward and backward, and a fused Adam (seconds of compiling)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="mixed precision: bfloat16 matrix products, float32 densities and Adam (fast with AVX512-BF16)",
    )
    p.add_argument("--out", default="outputs/vae")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs, args.ll_particles, args.test_images = min(args.epochs, 3), min(args.ll_particles, 100), 200
    torch.manual_seed(args.seed)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test, side = load_data(args.data, args.quick)
    model = build(args, train.dim, side)
    model.check(test[:2])  # every incompatibility of family, objective, estimator and K, before training
    t0 = time.perf_counter()
    history = fit(
        model,
        train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_data=test[: args.test_images],
        log_dir=out,
        # The fused path: Inductor fuses the elementwise work around the matrix products and
        # one fused kernel updates every parameter (see vitorch.training.compile).
        compile=args.compile,
        optimizer=(lambda params: fused_adam(params, args.lr)) if args.compile else None,
        autocast_dtype=torch.bfloat16 if args.bf16 else None,
    )
    train_s = time.perf_counter() - t0
    model.eval()
    metrics = zoo.evaluate(model, test[: args.test_images], num_particles=args.ll_particles)
    metrics.update(
        data=args.data,
        model=args.recipe or f"{args.objective}/{args.estimator}/K={args.K}/{args.posterior}/{args.arch}",
        epochs=args.epochs,
        steps=len(history.steps),
        precision="bf16 matmuls" if args.bf16 else "float32",
        train_seconds=round(train_s, 2),
        steps_per_second=round(len(history.steps) / train_s, 2),
        final_train_loss=history.steps[-1]["loss"],
    )
    save_figures(model, history, test, side, out, " (quick smoke run)" if args.quick else "")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(
        f"test IWAE-{metrics['num_particles']} log-likelihood {metrics['log_likelihood']:.2f} nats, "
        f"ELBO {metrics['elbo']:.2f}, KL {metrics['kl']:.2f}, active units {metrics['active_units']}; "
        f"figures in {out}"
    )
    print(
        json.dumps(
            {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
            | {"quick_smoke_run_not_converged": args.quick}
        )
    )
    return metrics


if __name__ == "__main__":
    main()
