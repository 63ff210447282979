"""The NUTS reference for the particle methods' logistic-regression test and benchmark (run once).

The data: 200 rows (a seeded subset) and 5 features of scikit-learn's Wisconsin breast
cancer data, each feature standardized over those rows; the label is "benign".  The model:

    w_k ~ N(0, 1) (k = 1..5),  b ~ N(0, 5^2),  y_i ~ Bernoulli(sigmoid(x_i . w + b)),

a 6-dimensional posterior on ``theta = (w, b)``.  NumPyro's NUTS runs 4 chains of
1000 warm-up and 5000 kept draws; the script writes one JSON file holding the data
themselves (so the tests need neither scikit-learn nor this script), the posterior mean,
sd and 5/50/95 % quantiles of every scalar, the split R-hat and bulk effective sample
size of each (Vehtari et al., 2021), and the command.

    python benchmarks/reference/particles_nuts.py        # writes tests/particles/data/logistic_nuts.json

References:
    Hoffman & Gelman, *The No-U-Turn Sampler* (JMLR 2014); Phan, Pradhan & Jankowiak,
    *Composable Effects for Flexible and Accelerated Probabilistic Programming in NumPyro* (2019);
    Vehtari, Gelman, Simpson, Carpenter & Bürkner, *Rank-normalization, folding, and
    localization: an improved R-hat* (Bayesian Analysis 2021).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "particles" / "data" / "logistic_nuts.json"
FEATURES = ("mean texture", "mean smoothness", "mean concave points", "mean symmetry", "worst radius")
ROWS, PRIOR_W, PRIOR_B = 200, 1.0, 5.0


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x [200, 5]`` standardized features and ``y [200]`` labels in {0, 1}."""
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    cols = [list(bc.feature_names).index(f) for f in FEATURES]
    rows = np.random.default_rng(seed).permutation(len(bc.target))[:ROWS]
    x = bc.data[np.ix_(rows, cols)]
    x = (x - x.mean(0)) / x.std(0)
    return np.round(x, 6), bc.target[rows].astype(float)


def run(x: np.ndarray, y: np.ndarray, chains: int, warmup: int, samples: int, seed: int) -> np.ndarray:
    """Draws ``[chains, samples, 6]`` of ``(w_1..w_5, b)``."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    def model(x, y):
        w = numpyro.sample("w", dist.Normal(0.0, PRIOR_W).expand([x.shape[1]]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, PRIOR_B))
        numpyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)

    jax.config.update("jax_enable_x64", True)
    mcmc = MCMC(
        NUTS(model, target_accept_prob=0.9),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(x), jnp.asarray(y))
    draws = mcmc.get_samples(group_by_chain=True)
    return np.concatenate([np.asarray(draws["w"]), np.asarray(draws["b"])[..., None]], -1)


def summarize(z: np.ndarray) -> dict:
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    flat = z.reshape(-1, z.shape[-1])
    q = np.quantile(flat, [0.05, 0.5, 0.95], axis=0)
    rhat, ess = split_gelman_rubin(z), effective_sample_size(z)
    return {
        "names": [f"w[{k}]" for k in range(z.shape[-1] - 1)] + ["b"],
        "mean": flat.mean(0).tolist(),
        "sd": flat.std(0, ddof=1).tolist(),
        "q05": q[0].tolist(),
        "q50": q[1].tolist(),
        "q95": q[2].tolist(),
        "rhat": rhat.tolist(),
        "ess": ess.tolist(),
        "max_rhat": float(rhat.max()),
        "min_ess": float(ess.min()),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    import numpyro

    x, y = data()
    t0 = time.perf_counter()
    z = run(x, y, args.chains, args.warmup, args.samples, args.seed)
    result = {
        "model": "logistic regression, breast cancer subset",
        "features": list(FEATURES),
        "prior": {"w": f"Normal(0, {PRIOR_W})", "b": f"Normal(0, {PRIOR_B})"},
        "chains": args.chains,
        "warmup": args.warmup,
        "samples": args.samples,
        "sampler": f"numpyro {numpyro.__version__} NUTS, target_accept_prob=0.9, float64",
    }
    result.update(summarize(z))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    argv_used = argv if argv is not None else sys.argv[1:]
    result["command"] = ("python benchmarks/reference/particles_nuts.py " + shlex.join(argv_used)).strip()
    result["x"] = x.tolist()
    result["y"] = y.tolist()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    keys = ("max_rhat", "min_ess", "seconds")
    print(json.dumps({k: result[k] for k in keys} | {"out": str(out)}), flush=True)


if __name__ == "__main__":
    main()
