"""Neural posterior estimation against sbi's NPE (SNPE-C, first round) on sbibm tasks.

For each sbibm task and simulation budget both libraries train the same conditional
flow on the same simulations, and each posterior at observation 1 is scored by C2ST
against sbibm's reference posterior samples (sbibm's definition of ``c2st``: scikit-learn
MLP, 5-fold cross-validation, z-scored by the reference; 0.5 is perfect, 1.0 is disjoint).

Matched settings (both sides):

* flow: 5 affine MAF transforms, MADE with 3 hidden layers of 50 tanh units (nflows'
  ``num_blocks=2`` plus its first layer; sbi's ``posterior_nn("maf")`` default), a
  permutation between transforms (vitorch: a per-transform autoregressive order),
  standard normal base; parameter counts are in every line;
* z-scoring of theta and x with training statistics;
* Adam, learning rate 5e-4, batch 200, 10% validation split, early stopping after 20
  epochs without improvement, best weights restored, gradient norm clipped at 5;
* the same training pairs (prior draws and simulations, seeded).

Differences that remain: sbi samples its flow on R^D and rejects samples outside a
bounded prior's support (leakage); vitorch maps the flow onto the support through the
prior's bijection, so it has no leakage.  The affine maps' scale functions differ
(nflows: sigmoid, vitorch: soft-clamped exp).

Each line: ``{"bench": "npe", "case": "<task>/sims=<n>", "vitorch_s", "peer": "sbi",
"peer_s", "ratio", "metric": "c2st", "vitorch", "peer_value", ...}`` where the times are
the training call (one run each, not a median: training to convergence is too long to
repeat), ``ratio = peer_s / vitorch_s``; ``epochs_*`` and ``s_per_epoch_*`` show how much
of a time difference is per-epoch speed and how much is a different stopping epoch.

    python benchmarks/npe.py [--quick] [--budgets 1000 10000] [--tasks ...] [--c2st-samples 2000]
                             [--threads 1 --cpu-time]
"""

from __future__ import annotations

import contextlib
import io
import math

import torch
from torch import nn

from vitorch.sbi import NPE, c2st

import _harness
from _harness import clock_name, parser, report, setup, try_import

TASKS = ["two_moons", "gaussian_linear", "slcp", "gaussian_mixture", "bernoulli_glm"]
# vitorch's c2st(backend="sklearn") is sbibm.metrics.c2st's code path (MLPClassifier with
# hidden layers (10 D, 10 D), 5-fold shuffled KFold, seed 1, z-scored by the reference);
# sbibm.metrics itself does not import without the 'future' package.
C2ST_BACKEND = "sklearn"
TRANSFORMS, HIDDEN, BATCH, LR, VAL, PATIENCE, CLIP = 5, 50, 200, 5e-4, 0.1, 20, 5.0


def _clock():
    return _harness._clock()


def vitorch_run(prior, theta, x, x_o, n_samples, max_epochs, seed):
    torch.manual_seed(seed)
    npe = NPE(prior, tuple(x.shape[1:]), flow="maf", transforms=TRANSFORMS, hidden=(HIDDEN,) * 3, activation=nn.Tanh)
    t0 = _clock()
    history = npe.fit(
        theta,
        x,
        batch_size=BATCH,
        lr=LR,
        validation_fraction=VAL,
        patience=PATIENCE,
        max_epochs=max_epochs,
        clip_grad_norm=CLIP,
        seed=seed,
    )
    elapsed = _clock() - t0
    epochs = history.steps[-1]["epoch"] + 1 if history.steps else 0
    samples = npe.posterior(x_o).sample((n_samples,))
    params = sum(p.numel() for p in npe.parameters())
    return samples, elapsed, epochs, params


def sbi_run(sbi_inference, posterior_nn, prior, theta, x, x_o, n_samples, max_epochs, seed):
    torch.manual_seed(seed)
    builder = posterior_nn(
        model="maf",
        hidden_features=HIDDEN,
        num_transforms=TRANSFORMS,
        z_score_theta="independent",
        z_score_x="independent",
    )
    inference = sbi_inference.SNPE_C(prior, density_estimator=builder, show_progress_bars=False)
    inference.append_simulations(theta, x)
    t0 = _clock()
    with contextlib.redirect_stdout(io.StringIO()):  # sbi prints a convergence message; keep stdout JSON
        estimator = inference.train(
            training_batch_size=BATCH,
            learning_rate=LR,
            validation_fraction=VAL,
            stop_after_epochs=PATIENCE,
            max_num_epochs=max_epochs,
            clip_max_norm=CLIP,
        )
    elapsed = _clock() - t0
    epochs = int(inference._summary["epochs_trained"][-1])
    posterior = inference.build_posterior(estimator)
    samples = posterior.sample((n_samples,), x=x_o, show_progress_bars=False)
    params = sum(p.numel() for p in estimator.parameters())
    return samples, elapsed, epochs, params


def prior_for_warmup():
    return torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))


def warm_up(prior, sbi_parts):
    """One tiny untimed training per library: the first optimizer in a process imports
    torch's compiler stack (seconds), which neither library's timing should carry."""
    theta = prior.sample((100,))
    x = theta + torch.randn_like(theta)
    vitorch_run(prior, theta, x, x[0], 10, 1, 0)
    if sbi_parts:
        sbi_run(*sbi_parts, prior, theta, x, x[0], 10, 1, 0)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=None, help=f"sbibm task names (default: {' '.join(TASKS)})")
    p.add_argument("--budgets", nargs="+", type=int, default=None, help="simulation budgets (default 1000 10000)")
    p.add_argument("--c2st-samples", type=int, default=None, help="posterior and reference samples per C2ST")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap for both libraries (default 1000)")
    p.add_argument("--c2st-epochs", type=int, default=None, help="classifier epoch cap (sbibm: 10000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup(args)
    tasks = args.tasks or (["two_moons", "gaussian_linear"] if args.quick else TASKS)
    budgets = args.budgets or ([500] if args.quick else [1000, 10000])
    n_c2st = args.c2st_samples or (500 if args.quick else 2000)
    max_epochs = args.max_epochs or (30 if args.quick else 1000)
    c2st_epochs = args.c2st_epochs or (50 if args.quick else 10000)
    sbibm, why = try_import("sbibm")
    if sbibm is None:
        for task in tasks:
            report("npe", task, math.nan, "sbi", None, skipped=f"sbibm unavailable ({why})")
        return
    sbi_ok, why_sbi = try_import("sbi")
    if sbi_ok is not None:
        from sbi.utils.get_nn_models import posterior_nn

        from sbi import inference as sbi_inference
    warm_up(prior_for_warmup(), sbi_ok is not None and (sbi_inference, posterior_nn))
    for name in tasks:
        task = sbibm.get_task(name)
        prior, simulator = task.get_prior_dist(), task.get_simulator()
        x_o = task.get_observation(num_observation=1)[0]
        reference = task.get_reference_posterior_samples(num_observation=1)[:n_c2st]
        for n in budgets:
            torch.manual_seed(args.seed + n)
            theta = prior.sample((n,))
            x = simulator(theta)
            s_v, t_v, e_v, p_v = vitorch_run(prior, theta, x, x_o, n_c2st, max_epochs, args.seed)
            c_v = c2st(reference, s_v, seed=1, backend=C2ST_BACKEND, max_epochs=c2st_epochs)
            extra = dict(
                metric="c2st",
                vitorch=c_v,
                epochs_vitorch=e_v,
                s_per_epoch_vitorch=t_v / max(e_v, 1),
                params_vitorch=p_v,
                simulations=n,
                observation=1,
                c2st_samples=n_c2st,
                clock=clock_name(),
                repeats=1,
                flow=f"maf {TRANSFORMS}x{HIDDEN}x3 tanh",
                batch=BATCH,
                max_epochs=max_epochs,
                c2st_max_epochs=c2st_epochs,
            )
            if sbi_ok is None:
                report("npe", f"{name}/sims={n}", t_v, "sbi", None, skipped=why_sbi, peer_value=None, **extra)
                continue
            s_p, t_p, e_p, p_p = sbi_run(
                sbi_inference, posterior_nn, prior, theta, x, x_o, n_c2st, max_epochs, args.seed
            )
            c_p = c2st(reference, s_p, seed=1, backend=C2ST_BACKEND, max_epochs=c2st_epochs)
            report(
                "npe",
                f"{name}/sims={n}",
                t_v,
                "sbi",
                t_p,
                peer_value=c_p,
                epochs_sbi=e_p,
                s_per_epoch_sbi=t_p / max(e_p, 1),
                params_sbi=p_p,
                per_epoch_ratio=(t_p / max(e_p, 1)) / (t_v / max(e_v, 1)),
                **extra,
            )


if __name__ == "__main__":
    main()
