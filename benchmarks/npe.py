"""Neural posterior estimation against sbi's NPE (SNPE-C, first round) on sbibm tasks.

For each sbibm task and simulation budget both libraries train the same conditional
flow on the same simulations, and each posterior at observation 1 is scored by C2ST
against sbibm's reference posterior samples (sbibm's definition of ``c2st``: scikit-learn
MLP with two hidden layers of ``10 D`` ReLU units, Adam, up to 10,000 epochs, 5-fold
shuffled cross-validation, z-scored by the reference; 0.5 is perfect, 1.0 is disjoint).
``--c2st-samples`` posterior and reference samples enter each C2ST, the same number
for both libraries.

Matched settings (both sides):

* flow: 5 affine MAF transforms, MADE with 3 hidden layers of 50 tanh units (nflows'
  ``num_blocks=2`` plus its first layer; sbi's ``posterior_nn("maf")`` default), a
  permutation between transforms (vitorch: a per-transform autoregressive order),
  standard normal base; parameter counts are in every line;
* z-scoring of theta and x with training statistics;
* Adam, learning rate 5e-4, batch 200, 10% validation split, early stopping after 20
  epochs without improvement, best weights restored, gradient norm clipped at 5;
  at most ``--max-epochs`` epochs, and at most ``--large-epochs`` at budgets of
  100,000 simulations and more (both libraries alike; ``max_epochs`` in each line).
  sbi 0.21's loop runs while ``epoch <= max_num_epochs``, one epoch more than its
  ``max_num_epochs``, so it is passed ``cap - 1`` and both sides train ``cap`` epochs
  (``epochs_vitorch`` and ``epochs_sbi`` in each line show it).  Early stopping is the
  same rule on both sides (stop after ``patience`` epochs without a better held-out
  ``log q``); a run that reaches the cap keeps its last weights in sbi and its best
  held-out weights in vitorch;
* the same training pairs (prior draws and simulations, seeded).

Differences that remain: sbi samples its flow on R^D and rejects samples outside a
bounded prior's support (leakage); vitorch maps the flow onto the support through the
prior's bijection, so it has no leakage.  Both affine maps take their scale from
``softplus(raw) + 1e-3`` (nflows 0.14, `vitorch.flows.SoftplusAffine`), but the
context enters each MADE differently: nflows adds ``tanh(Linear(context))`` to the first
hidden layer's input, vitorch reads the context as extra inputs of that layer.

Beside C2ST, which scores one observation, each line has ``heldout_log_q_vitorch`` and
``heldout_log_q_sbi``: the mean ``log q(theta | x)`` over ``--heldout`` fresh pairs from
the prior and simulator (the same pairs for both, drawn once per task, independent of
``--seed``).  Its difference between the libraries estimates the difference of their
expected ``KL(p(theta | x) || q(theta | x))`` over ``x`` from the prior predictive, with a
standard error (``heldout_diff_se``) from the paired differences.  For a bounded prior
sbi's value is its flow's density before the leakage correction (a lower bound on its
posterior's); vitorch's flow lives on the support.

Each line: ``{"bench": "npe", "case": "<task>/sims=<n>", "vitorch_s", "peer": "sbi",
"peer_s", "ratio", "metric": "c2st", "vitorch", "peer_value", ...}`` where the times are
the training call (one run each, not a median: training to convergence is too long to
repeat), ``ratio = peer_s / vitorch_s``; ``epochs_*`` and ``s_per_epoch_*`` show how much
of a time difference is per-epoch speed and how much is a different stopping epoch.

With ``--compile`` each case adds a line ``"<task>/sims=<n>/compiled"``: vitorch trained
through ``torch.compile`` (``NPE.fit(..., compile=True)``) on the same pairs, against the
same sbi run.  Its ``vitorch_s`` includes compiling: the process's CPU time (this thread
plus the compiler's child processes) over the whole call, with Inductor's on-disk caches
off, so every case compiles from scratch; ``compile_s`` is that time up to the end of the
first step, and ``ratio_excluding_compile`` divides by the rest.

    python benchmarks/npe.py [--quick] [--budgets 1000 10000 100000] [--tasks ...]
                             [--c2st-samples 2000] [--large-epochs 10] [--compile]
                             [--threads 1 --cpu-time]
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import resource
import time

# Compile in this process (its compiler children are waited for, so their CPU time is
# counted) and from scratch: a compiled line reports the cost a first run pays.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

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


def _cpu_with_children():
    """This thread's CPU time plus that of finished child processes (the C++ compiler)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.thread_time() + children.ru_utime + children.ru_stime


def vitorch_run(prior, theta, x, x_o, n_samples, max_epochs, seed, compile=False, heldout=None):
    torch.manual_seed(seed)
    npe = NPE(prior, tuple(x.shape[1:]), flow="maf", transforms=TRANSFORMS, hidden=(HIDDEN,) * 3, activation=nn.Tanh)
    clock = _cpu_with_children if compile else _clock
    first_step = []
    callbacks = [lambda ctx: first_step.append(clock()) if ctx.step == 1 else None] if compile else []
    t0 = clock()
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
        compile=compile,
        callbacks=callbacks,
    )
    elapsed = clock() - t0
    epochs = history.steps[-1]["epoch"] + 1 if history.steps else 0
    with torch.no_grad():
        samples = npe.posterior(x_o).sample((n_samples,))
    params = sum(p.numel() for p in npe.parameters())
    compile_s = first_step[0] - t0 if first_step else None
    log_q = _chunked(npe.log_prob, heldout)
    return samples, elapsed, epochs, params, compile_s, log_q


def _chunked(log_prob, heldout, rows=5000):
    """``log_prob(theta, x)`` ``[N]`` over the held-out pairs in chunks (``None`` without pairs)."""
    if heldout is None:
        return None
    theta, x = heldout
    with torch.no_grad():
        return torch.cat([log_prob(theta[i : i + rows], x[i : i + rows]) for i in range(0, len(theta), rows)])


def sbi_run(sbi_inference, posterior_nn, prior, theta, x, x_o, n_samples, max_epochs, seed, heldout=None):
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
            max_num_epochs=max_epochs - 1,  # sbi's loop trains max_num_epochs + 1 epochs
            clip_max_norm=CLIP,
        )
    elapsed = _clock() - t0
    epochs = int(inference._summary["epochs_trained"][-1])
    posterior = inference.build_posterior(estimator)
    samples = posterior.sample((n_samples,), x=x_o, show_progress_bars=False)
    params = sum(p.numel() for p in estimator.parameters())
    log_q = _chunked(lambda t, c: estimator.log_prob(t, context=c), heldout)
    return samples, elapsed, epochs, params, log_q


def prior_for_warmup():
    return torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))


def warm_up(prior, sbi_parts, compile):
    """One tiny untimed training per library: the first optimizer in a process imports
    torch's compiler stack (seconds), which neither library's timing should carry."""
    theta = prior.sample((100,))
    x = theta + torch.randn_like(theta)
    vitorch_run(prior, theta, x, x[0], 10, 1, 0)
    if compile:
        vitorch_run(prior, theta, x, x[0], 10, 1, 0, compile=True)
    if sbi_parts:
        sbi_run(*sbi_parts, prior, theta, x, x[0], 10, 1, 0)


def _sbibm_c2st():
    """sbibm's own ``c2st`` (to check vitorch's against it once), or ``None`` if it will not import."""
    try:
        from sbibm.metrics import c2st as sbibm_c2st
    except Exception:  # sbibm.metrics needs the optional 'future' package
        return None
    return sbibm_c2st


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=None, help=f"sbibm task names (default: {' '.join(TASKS)})")
    p.add_argument("--budgets", nargs="+", type=int, default=None, help="simulation budgets (default 1e3 1e4 1e5)")
    p.add_argument("--c2st-samples", type=int, default=None, help="posterior and reference samples per C2ST")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap for both libraries (default 1000)")
    p.add_argument("--large-epochs", type=int, default=10, help="epoch cap at budgets >= 100000 (both libraries)")
    p.add_argument("--c2st-epochs", type=int, default=None, help="classifier epoch cap (sbibm: 10000)")
    p.add_argument("--compile", action="store_true", help="add a line per case for vitorch with compile=True")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=None, help="held-out pairs for the mean log q (default 10000)")
    args = p.parse_args()
    setup(args)
    tasks = args.tasks or (["two_moons", "gaussian_linear"] if args.quick else TASKS)
    budgets = args.budgets or ([500] if args.quick else [1000, 10000, 100000])
    n_c2st = args.c2st_samples or (500 if args.quick else 2000)
    max_epochs = args.max_epochs or (30 if args.quick else 1000)
    c2st_epochs = args.c2st_epochs or (50 if args.quick else 10000)
    n_heldout = args.heldout or (1000 if args.quick else 10000)
    sbibm, why = try_import("sbibm")
    if sbibm is None:
        for task in tasks:
            report("npe", task, math.nan, "sbi", None, skipped=f"sbibm unavailable ({why})")
        return
    sbi_ok, why_sbi = try_import("sbi")
    if sbi_ok is not None:
        from sbi.utils.get_nn_models import posterior_nn

        from sbi import inference as sbi_inference
    warm_up(prior_for_warmup(), sbi_ok is not None and (sbi_inference, posterior_nn), args.compile)
    sbibm_c2st = _sbibm_c2st()
    for name in tasks:
        task = sbibm.get_task(name)
        prior, simulator = task.get_prior_dist(), task.get_simulator()
        x_o = task.get_observation(num_observation=1)[0]
        reference = task.get_reference_posterior_samples(num_observation=1)[:n_c2st]
        torch.manual_seed(2**31 - 1)  # the same held-out pairs whatever --seed
        theta_h = prior.sample((n_heldout,))
        heldout = (theta_h, simulator(theta_h))
        for n in budgets:
            torch.manual_seed(args.seed + n)
            theta = prior.sample((n,))
            x = simulator(theta)
            epochs_cap = min(max_epochs, args.large_epochs) if n >= 100_000 else max_epochs
            s_v, t_v, e_v, p_v, _, lq_v = vitorch_run(
                prior, theta, x, x_o, n_c2st, epochs_cap, args.seed, heldout=heldout
            )
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
                max_epochs=epochs_cap,
                c2st_max_epochs=c2st_epochs,
                heldout_log_q_vitorch=float(lq_v.mean()),
                heldout_pairs=n_heldout,
                seed=args.seed,
            )
            if sbibm_c2st is not None and not args.quick:
                # Once: vitorch's c2st(backend="sklearn") beside sbibm.metrics.c2st on the same samples.
                extra["c2st_sbibm_check"] = float(sbibm_c2st(reference, s_v, seed=1))
                sbibm_c2st = None
            if sbi_ok is None:
                report("npe", f"{name}/sims={n}", t_v, "sbi", None, skipped=why_sbi, peer_value=None, **extra)
                continue
            s_p, t_p, e_p, p_p, lq_p = sbi_run(
                sbi_inference, posterior_nn, prior, theta, x, x_o, n_c2st, epochs_cap, args.seed, heldout
            )
            c_p = c2st(reference, s_p, seed=1, backend=C2ST_BACKEND, max_epochs=c2st_epochs)
            diff = lq_v - lq_p
            peer = dict(
                epochs_sbi=e_p,
                s_per_epoch_sbi=t_p / max(e_p, 1),
                params_sbi=p_p,
                peer_value=c_p,
                heldout_log_q_sbi=float(lq_p.mean()),
                heldout_diff_se=float(diff.std() / math.sqrt(len(diff))),
            )
            per_epoch = (t_p / max(e_p, 1)) / (t_v / max(e_v, 1))
            report("npe", f"{name}/sims={n}", t_v, "sbi", t_p, per_epoch_ratio=per_epoch, **peer, **extra)
            if not args.compile:
                continue
            s_c, t_c, e_c, _, compile_s, lq_c = vitorch_run(
                prior, theta, x, x_o, n_c2st, epochs_cap, args.seed, True, heldout
            )
            c_c = c2st(reference, s_c, seed=1, backend=C2ST_BACKEND, max_epochs=c2st_epochs)
            steady = (t_c - compile_s) / max(e_c, 1)
            compiled = dict(
                extra,
                vitorch=c_c,
                epochs_vitorch=e_c,
                heldout_log_q_vitorch=float(lq_c.mean()),
                s_per_epoch_vitorch=steady,
                compile_s=compile_s,
                ratio_excluding_compile=t_p / (t_c - compile_s),
                per_epoch_ratio=(t_p / max(e_p, 1)) / steady,
                clock="thread CPU time plus compiler child processes",
            )
            compiled.pop("c2st_sbibm_check", None)
            report("npe", f"{name}/sims={n}/compiled", t_c, "sbi", t_p, **peer, **compiled)


if __name__ == "__main__":
    main()
