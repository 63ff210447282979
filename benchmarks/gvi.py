"""FB-GVI against stochastic-gradient ADVI (``vt.loss`` + Adam) on the same full-rank Gaussian family.

Model: Bayesian logistic regression on scikit-learn's breast cancer data (569 x 30,
standardized, ``N(0, 1)`` weights, ``N(0, 5^2)`` intercept; D = 31), the
``logistic_breast_cancer`` model of ``benchmarks/reference/models.py``.

Both methods start from the same ``N(0, 0.1^2 I)`` and fit a full-rank Gaussian:

* ``fbgvi``: ``vitorch.gvi.FBGVI`` with `stein_moments` (64 draws per step, gradients
  only), step ``h = 1 / beta`` with ``beta = max(prior precision) + lambda_max(X~^T X~) / 4``
  (X~ with the intercept column), the paper's bound;
* ``adam``: ``AutoGuide(model, "full")`` trained by ``VI`` (``vt.loss`` underneath,
  reparameterization gradients) with Adam, in two recipes: the guide's defaults (ELBO,
  ``K = 1``, ``lr = 0.02``) and a careful one (``K = 16``, sticking-the-landing gradients,
  ``lr`` from 0.02 to 2e-4 on a cosine schedule over the run).

Reference: the careful Adam recipe run for 6,000 steps (``--quick``: 1,500), a converged
full-rank fit.  Every ELBO here is estimated with the same 4,000 fixed standard-normal draws
(common random numbers), so differences between fits are not sampling noise.  Each line
reports the iterations and the time (iterations times the median time of one step, in the
same process) until the ELBO first came within ``gap`` nats of the reference, for gaps 1.0,
0.3 and 0.1 (checked every 20 steps; ``null`` if never within the run);
``ratio = adam_s / fbgvi_s``.

    python benchmarks/gvi.py [--quick] [--threads 1 --cpu-time]

References:
    Diao, Balasubramanian, Chewi & Salim, *Forward-backward Gaussian variational inference via
    JKO in the Bures-Wasserstein space* (ICML 2023); Kucukelbir et al., *Automatic
    Differentiation Variational Inference* (JMLR 2017); Kingma & Ba, *Adam* (ICLR 2015).
"""

from __future__ import annotations

import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "reference"))
import vitorch as vt  # noqa: E402
from models import logistic_breast_cancer  # noqa: E402
from vitorch.gvi import FBGVI, stein_moments  # noqa: E402
from vitorch.model import VI, AutoGuide  # noqa: E402

from _harness import clock_name, median_time, parser, report, setup  # noqa: E402

GAPS = (1.0, 0.3, 0.1)


def smoothness() -> float:
    from sklearn.datasets import load_breast_cancer

    x, _ = load_breast_cancer(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float64)
    x = torch.cat([(x - x.mean(0)) / x.std(0), torch.ones(len(x), 1)], 1)
    return 1.0 + torch.linalg.eigvalsh(x.T @ x / 4).max().item()


def elbo_fn(model, d: int):
    eps = torch.randn(4000, d, generator=torch.Generator().manual_seed(123), dtype=torch.float64)

    @torch.no_grad()
    def elbo(loc, tril) -> float:
        return (model.log_density(loc + eps @ tril.mT).mean() + vt.FullRankNormal(loc, tril).entropy()).item()

    return elbo


def run_fbgvi(model, moments, h, steps, every, elbo):
    q = vt.FullRankNormal(torch.zeros(model.dim), 0.1 * torch.eye(model.dim))
    fb = FBGVI(step_size=h, moments=moments)
    curve = [(0, elbo(q.loc, q.scale_tril))]
    for k in range(1, steps + 1):
        q = fb.step(q)
        if k % every == 0:
            curve.append((k, elbo(q.loc, q.scale_tril)))
    return curve, lambda: fb.step(q)


def run_adam(model, steps, every, elbo, careful: bool):
    torch.manual_seed(0)
    guide = AutoGuide(model, "full")
    vi = VI(model, guide, 16, estimator=vt.estimators.stl) if careful else VI(model, guide, 1)
    opt = torch.optim.Adam(vi.parameters(), lr=guide.default_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=2e-4) if careful else None

    def step():
        out = vi()
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if sched is not None:
            sched.step()

    def current():
        with torch.no_grad():
            q = guide()
            return elbo(q.loc, q.scale_tril)

    curve = [(0, current())]
    for k in range(1, steps + 1):
        step()
        if k % every == 0:
            curve.append((k, current()))
    return curve, step


def first_within(curve, target):
    return next((k for k, e in curve if e >= target), None)


ADAM = {
    "K=1, lr=0.02 (AutoGuide defaults)": False,
    "K=16, STL, lr 0.02 -> 2e-4 cosine": True,
}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    setup(args)
    torch.set_default_dtype(torch.float64)
    quick = args.quick
    repeats = args.repeats or (5 if quick else 30)
    model = logistic_breast_cancer()
    beta = smoothness()
    elbo = elbo_fn(model, model.dim)
    ref_steps, steps, every = (1500, 600, 20) if quick else (6000, 4000, 20)
    reference = run_adam(model, ref_steps, ref_steps, elbo, careful=True)[0][-1][1]
    moments = stein_moments(model.log_density, 64, torch.Generator().manual_seed(1))
    fb_curve, fb_step = run_fbgvi(model, moments, 1.0 / beta, steps, every, elbo)
    fb_s = median_time(fb_step, repeats)
    for label, careful in ADAM.items():
        adam_curve, adam_step = run_adam(model, steps, every, elbo, careful)
        adam_s = median_time(adam_step, repeats)
        for gap in GAPS:
            k_fb, k_adam = first_within(fb_curve, reference - gap), first_within(adam_curve, reference - gap)
            report(
                "gvi",
                f"logistic_breast_cancer D=31: ELBO within {gap} nats of the optimum; Adam {label}",
                k_fb * fb_s if k_fb is not None else None,
                "torch",
                k_adam * adam_s if k_adam is not None else None,
                method="FBGVI(stein_moments n=64, h=1/beta)",
                peer_method=f"vitorch VI (vt.loss) + Adam, AutoGuide full, {label}",
                metric="iterations to reach",
                vitorch=k_fb,
                peer_value=k_adam,
                vitorch_ms_per_step=round(1e3 * fb_s, 3),
                peer_ms_per_step=round(1e3 * adam_s, 3),
                reference_elbo=round(reference, 3),
                reference=f"Adam K=16 STL cosine, {ref_steps} steps",
                final_fbgvi_elbo=round(fb_curve[-1][1], 3),
                best_adam_elbo=round(max(e for _, e in adam_curve), 3),
                steps=steps,
                step_size=f"1/beta = {1 / beta:.3g}",
                clock=clock_name(),
                quick=quick,
            )


if __name__ == "__main__":
    main()
