"""Pathfinder: vitorch against BlackJAX on the same log densities, accuracy and time.

Models (unconstrained densities, the same in torch and in JAX, checked equal at random
points before timing):

* ``gaussian_d10``: a correlated Gaussian (seeded precision ``A A^T / 10 + 0.3 I``),
  reference exact;
* ``logistic_breast_cancer`` (D = 31) and ``eight_schools_noncentered`` (D = 10) of
  ``benchmarks/reference/models.py``, reference from BlackJAX NUTS (window adaptation,
  4 chains x (1,000 warm-up + 2,000 draws), on the JAX twin of the density).

Both libraries run single-path Pathfinder from the same start (uniform in ``[-2, 2]^D``,
seeded) with the same settings: at most 100 L-BFGS iterations, history ``J = 6``, 20 draws
per ELBO estimate, 1,000 draws returned.  Their L-BFGS stopping rules differ (vitorch:
relative decrease below ``1e-13``; BlackJAX: ``f_k - f_{k+1} < ftol``, set to ``1e-11``),
and BlackJAX estimates the ELBO at all ``maxiter + 1`` slots of its fixed-shape path.

Accuracy: ``max_mean_err``, the largest |mean error| over the unconstrained coordinates in
reference standard deviations, and ``median_sd_ratio`` (draws' sd / reference sd), from
the 1,000 draws; the median over 5 seeds of the start and the draws.
Timing: the median over repeats of one whole run (optimization, ELBO estimates and the
1,000 draws), BlackJAX jitted and warmed up, ``block_until_ready`` on its outputs.  With
``--cpu-time`` both sides are timed by the *process* CPU time (``time.process_time``),
which counts XLA's worker threads as well as torch's; run with
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``
and ``--threads 1`` so each side computes on one core.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        python benchmarks/pathfinder.py [--quick] [--threads 1 --cpu-time]

References:
    Zhang, Carpenter, Gelman & Vehtari, *Pathfinder: Parallel quasi-Newton variational
    inference* (JMLR 2022); Cabezas et al., *BlackJAX* (2024).
"""

from __future__ import annotations

import math
import pathlib
import statistics
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reference"))
from models import SIGMA8, Y8, eight_schools_noncentered, logistic_breast_cancer  # noqa: E402
from vitorch.gvi import pathfinder  # noqa: E402

from _harness import parser, report, setup, try_import  # noqa: E402

SETTINGS = {"max_iters": 100, "history": 6, "num_elbo_draws": 20, "num_draws": 1000}


def gaussian_d10():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(10, 10, generator=g, dtype=torch.float64)
    precision = a @ a.T / 10 + 0.3 * torch.eye(10, dtype=torch.float64)
    loc = torch.randn(10, generator=g, dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(loc, precision_matrix=precision)
    return target.log_prob, (loc, target.variance.sqrt()), (loc.numpy(), precision.numpy())


def jax_twin(name: str, extra):
    """The JAX log density of each model on the unconstrained vector, as the torch Model lays it out."""
    import jax.numpy as jnp
    from jax.nn import log_sigmoid
    from jax.scipy.stats import norm

    if name == "gaussian_d10":
        loc, precision = jnp.asarray(extra[0]), jnp.asarray(extra[1])
        log_det = jnp.linalg.slogdet(precision)[1]

        def f(z):
            d = z - loc
            return -0.5 * d @ precision @ d + 0.5 * log_det - 0.5 * z.shape[0] * math.log(2 * math.pi)

        return f
    if name == "logistic_breast_cancer":
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0, ddof=1)
        x, y = jnp.asarray(x), jnp.asarray(y, dtype=jnp.float64)

        def f(z):
            w, b = z[:30], z[30]
            logits = x @ w + b
            lik = (y * log_sigmoid(logits) + (1 - y) * log_sigmoid(-logits)).sum()
            return norm.logpdf(w).sum() + norm.logpdf(b, 0.0, 5.0) + lik

        return f
    y8, s8 = jnp.asarray(Y8.numpy(), dtype=jnp.float64), jnp.asarray(SIGMA8.numpy(), dtype=jnp.float64)

    def f(z):  # mu, log tau, eta[8]; HalfCauchy(5) on tau with the log-Jacobian log tau
        mu, log_tau, eta = z[0], z[1], z[2:]
        tau = jnp.exp(log_tau)
        log_half_cauchy = math.log(2 / (math.pi * 5)) - jnp.log1p((tau / 5) ** 2)
        prior = norm.logpdf(mu, 0.0, 5.0) + log_half_cauchy + log_tau + norm.logpdf(eta).sum()
        return prior + norm.logpdf(y8, mu + tau * eta, s8).sum()

    return f


def models():
    log_prob, ref, extra = gaussian_d10()
    out = {"gaussian_d10": (log_prob, 10, ref, extra)}
    for name, build in (
        ("logistic_breast_cancer", logistic_breast_cancer),
        ("eight_schools_noncentered", eight_schools_noncentered),
    ):
        m = build()
        out[name] = (m.log_density, m.dim, None, None)
    return out


def nuts_reference(jax, blackjax, logdensity, d: int, chains: int, warmup: int, draws: int):
    import jax.numpy as jnp

    samples = []
    for c in range(chains):
        key = jax.random.PRNGKey(100 + c)
        init = jax.random.uniform(key, (d,), minval=-2.0, maxval=2.0)
        warm = blackjax.window_adaptation(blackjax.nuts, logdensity, target_acceptance_rate=0.9)
        (state, params), _ = warm.run(key, init, num_steps=warmup)
        kernel = jax.jit(blackjax.nuts(logdensity, **params).step)

        def body(state, k, kernel=kernel):
            state, _ = kernel(k, state)
            return state, state.position

        _, xs = jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(200 + c), draws))
        samples.append(xs)
    x = jnp.concatenate(samples)
    return torch.tensor(x.mean(0).tolist(), dtype=torch.float64), torch.tensor(x.std(0).tolist(), dtype=torch.float64)


def accuracy(draws: torch.Tensor, ref) -> tuple[float, float]:
    mean, sd = ref
    err = ((draws.mean(0) - mean).abs() / sd).max().item()
    return err, (draws.std(0) / sd).median().item()


def timed(fn, repeats: int, clock) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    setup(args)
    torch.set_default_dtype(torch.float64)
    clock = time.process_time if args.cpu_time else time.perf_counter
    clock_label = "process CPU time (torch and XLA threads)" if args.cpu_time else "wall"
    repeats = args.repeats or (3 if args.quick else 15)
    seeds = range(2 if args.quick else 5)
    bj, why = try_import("blackjax")
    jax = None
    if bj is not None:
        import jax

        jax.config.update("jax_enable_x64", True)
        import blackjax.vi.pathfinder as bjp
    chains, warmup, draws = (2, 300, 500) if args.quick else (4, 1000, 2000)
    for name, (log_prob, d, ref, extra) in models().items():
        starts = [4 * torch.rand(d, generator=torch.Generator().manual_seed(s)) - 2 for s in seeds]
        vt_acc = []
        for s, z0 in zip(seeds, starts):
            out = pathfinder(log_prob, z0, generator=torch.Generator().manual_seed(s), **SETTINGS)
            vt_acc.append((out, s))
        vt_s = timed(lambda f=log_prob, z0=starts[0]: pathfinder(f, z0, **SETTINGS), repeats, clock)
        extra_fields = {"D": d, "settings": SETTINGS, "clock": clock_label, "quick": args.quick}
        if bj is None:
            ref = ref or (None, None)
            report("pathfinder", name, vt_s, "blackjax", None, skipped=why, **extra_fields)
            continue
        f = jax_twin(name, extra)
        z = torch.randn(4, d, generator=torch.Generator().manual_seed(9))
        gap = max(abs(f(jax.numpy.asarray(zi.numpy())).item() - log_prob(zi[None])[0].item()) for zi in z)
        if gap > 1e-5:  # eight schools' data are float32 tensors in models.py
            raise SystemExit(f"{name}: the JAX twin differs from the torch density by {gap}")
        if ref is None:
            ref = nuts_reference(jax, bj, f, d, chains, warmup, draws)
            reference = f"BlackJAX NUTS {chains} chains x ({warmup} + {draws})"
        else:
            reference = "exact"

        def approximate_and_sample(key, z0, f=f):
            state, _ = bjp.approximate(
                key,
                f,
                z0,
                num_samples=SETTINGS["num_elbo_draws"],
                maxiter=SETTINGS["max_iters"],
                maxcor=SETTINGS["history"],
                ftol=1e-11,
            )
            x, _ = bjp.sample(jax.random.fold_in(key, 1), state, SETTINGS["num_draws"])
            return x

        run_bj = jax.jit(approximate_and_sample)

        def draws_bj(seed: int, z0: torch.Tensor, run_bj=run_bj):
            return run_bj(jax.random.PRNGKey(seed), jax.numpy.asarray(z0.numpy())).block_until_ready()

        bj_acc = [accuracy(torch.tensor(draws_bj(s, z0).tolist()), ref) for s, z0 in zip(seeds, starts)]
        bj_s = timed(lambda run=draws_bj, z0=starts[0]: run(0, z0), repeats, clock)
        vt_metrics = [accuracy(out.draws, ref) for out, _ in vt_acc]
        med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
        report(
            "pathfinder",
            name,
            vt_s,
            "blackjax",
            bj_s,
            metric="max_mean_err (reference sd)",
            vitorch=med([m[0] for m in vt_metrics]),
            peer_value=med([m[0] for m in bj_acc]),
            vitorch_median_sd_ratio=med([m[1] for m in vt_metrics]),
            peer_median_sd_ratio=med([m[1] for m in bj_acc]),
            vitorch_khat=med([out.khat.item() for out, _ in vt_acc]),
            vitorch_iterations=med([out.path.shape[0] - 1 for out, _ in vt_acc]),
            reference=reference,
            **extra_fields,
        )


if __name__ == "__main__":
    main()
