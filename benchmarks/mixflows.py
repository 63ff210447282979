"""MixFlows against spline flows at equal time, on 2-D targets with known log Z and moments.

Targets (each a normalized density times ``e^1.3``, so ``log Z = 1.3``; means and
variances in closed form, so no MCMC reference is needed):

* ``banana``: ``x1 ~ N(0, 4)``, ``x2 | x1 ~ N(0.3 (x1^2 - 4), 1)``;
* ``funnel``: Neal's funnel with ``x1 ~ N(0, 1.5^2)``, ``x2 | x1 ~ N(0, e^x1)``;
* ``mixture``: two Gaussians ``N((-2, 0), 0.49 I)`` and ``N((2, 0.5), 0.49 I)``, equal weights.

Methods, all given the log-density and its autograd gradient only:

* ``vitorch`` = `vitorch.MixFlow` as the paper builds it (Xu, Chen & Campbell, 2023): fit a
  diagonal-Gaussian reference ``q0`` by the ELBO (reparameterization, Adam), then choose the
  leapfrog step from a grid by the MixFlow's own ELBO estimate; ``N`` iterates, ``L`` leapfrog
  steps per map.  Its time (``vitorch_s``) is that whole procedure;
* ``zuko`` = zuko's NSF and ``vitorch_spline_flow`` = vitorch's `Flow` with the same
  architecture (3 autoregressive rational-quadratic spline transforms, 8 bins on [-5, 5],
  MADE hidden widths (64, 64), ELU, standard-normal base), each trained by reverse KL
  (reparameterized ELBO, 64 particles, Adam 3e-3) for as long as the MixFlow took
  (``peer_s``, ``vitorch_spline_flow_s``: the time actually used, which overshoots by at most one step).

Also timed: the Concrete families' fused draw and density with its backward against torch's
``RelaxedOneHotCategorical`` (``rsample`` then ``log_prob``), and the straight-through draw
against pyro's ``RelaxedOneHotCategoricalStraightThrough`` (cases ``concrete/...``; float64).

Quality, from fresh draws after training (evaluation time not counted in the times above,
reported as ``*_eval_s``): ``elbo`` (``E[log pi - log q]``; for the MixFlow on its augmented
state, a bound on the same ``log Z``), ``kl`` (``log Z - elbo``, the reverse KL),
``mean_err`` (largest ``|mean - exact| / exact sd`` over the coordinates) and ``var_err``
(largest ``|var / exact var - 1|``).  ``ratio = peer_s / vitorch_s`` is about one by design.

    python benchmarks/mixflows.py [--quick] [--threads 1 --cpu-time]

References:
    Xu, Chen & Campbell, MixFlows: principled variational inference via mixed flows (ICML 2023).
    Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows (NeurIPS 2019).
"""

from __future__ import annotations

import math

import torch

import vitorch as vt
from vitorch import flows
from vitorch.families import DiagNormal, MixFlow

import _harness
from _harness import clock_name, interleaved_medians, median_time, parser, report, setup, try_import

LOG_C = 1.3
TRANSFORMS, HIDDEN, BINS, BOUND = 3, (64, 64), 8, 5.0


def _normal_lp(x, m, s):
    s = torch.as_tensor(s, dtype=x.dtype)
    return -0.5 * ((x - m) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)


def banana(x):
    return _normal_lp(x[..., 0], 0.0, 2.0) + _normal_lp(x[..., 1], 0.3 * (x[..., 0] ** 2 - 4), 1.0) + LOG_C


def funnel(x):
    return _normal_lp(x[..., 0], 0.0, 1.5) + _normal_lp(x[..., 1], 0.0, torch.exp(x[..., 0] / 2)) + LOG_C


_MU = torch.tensor([[-2.0, 0.0], [2.0, 0.5]])


def mixture(x):
    mu = _MU.to(x.dtype)
    comps = torch.stack([_normal_lp(x, mu[k], 0.7).sum(-1) for k in range(2)], -1)
    return comps.logsumexp(-1) + math.log(0.5) + LOG_C


TARGETS = {
    "banana": (banana, torch.tensor([0.0, 0.0]), torch.tensor([4.0, 1 + 2 * 0.09 * 16])),
    "funnel": (funnel, torch.tensor([0.0, 0.0]), torch.tensor([2.25, math.exp(1.125)])),
    "mixture": (mixture, _MU.mean(0), 0.49 + ((_MU - _MU.mean(0)) ** 2).mean(0)),
}


def clock() -> float:
    return _harness._clock()


def moment_errors(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[float, float]:
    x = x[torch.isfinite(x).all(-1)]
    mean_err = ((x.mean(0) - mean).abs() / var.sqrt()).max().item()
    var_err = (x.var(0) / var - 1).abs().max().item()
    return mean_err, var_err


# ---------------------------------------------------------------- MixFlow


def fit_mixflow(lp, cfg) -> tuple[MixFlow, dict]:
    loc = torch.zeros(2, requires_grad=True)
    raw = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([loc, raw], lr=0.02)
    for _ in range(cfg["q0_steps"]):
        q = DiagNormal(loc, torch.nn.functional.softplus(raw) + 1e-3)
        out = vt.loss(lp, q, 32)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    base = DiagNormal(loc.detach(), torch.nn.functional.softplus(raw.detach()) + 1e-3)
    scores = {}
    for eps in cfg["eps_grid"]:
        q = MixFlow(lp, base, cfg["N"], eps, cfg["L"])
        e = q.elbo(cfg["grid_draws"])
        scores[eps] = e.mean().item() if torch.isfinite(e).all() else -math.inf
    best = max(scores, key=scores.get)
    return MixFlow(lp, base, cfg["N"], best, cfg["L"]), {"step_size": best, "grid_elbo": scores}


def evaluate_mixflow(q: MixFlow, cfg) -> dict:
    e = q.elbo(cfg["eval_draws"])
    x = q.position(q.sample((cfg["moment_draws"],)))
    return {"elbo": e.mean().item(), "elbo_se": e.std().item() / math.sqrt(len(e)), "x": x}


# ---------------------------------------------------------------- spline flows


def vitorch_nsf() -> flows.ConditionalFlow:
    orders = [[0, 1] if i % 2 == 0 else [1, 0] for i in range(TRANSFORMS)]
    return flows.ConditionalFlow(
        [flows.MAF(2, flows.RQSpline(BINS, BOUND), HIDDEN, order=o, activation=torch.nn.ELU) for o in orders]
    )


def zuko_nsf(zuko):
    return zuko.flows.NSF(2, transforms=TRANSFORMS, bins=BINS, hidden_features=HIDDEN, activation=torch.nn.ELU)


def train_flow(module, lp, budget: float) -> tuple[float, int]:
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    t0, steps = clock(), 0
    while clock() - t0 < budget:
        z, log_q = module().rsample_and_log_prob((64,))
        loss = (log_q - lp(z)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
        opt.step()
        steps += 1
    return clock() - t0, steps


@torch.no_grad()
def evaluate_flow(module, lp, cfg) -> dict:
    z, log_q = module().rsample_and_log_prob((cfg["eval_draws"],))
    e = lp(z) - log_q
    e = e[torch.isfinite(e)]
    x = module().sample((cfg["moment_draws"],))
    return {"elbo": e.mean().item(), "elbo_se": e.std().item() / math.sqrt(len(e)), "x": x}


# ---------------------------------------------------------------- Concrete


def concrete_cases(args) -> None:
    """Relaxed categoricals: vitorch's fused draw and density against torch's (and pyro's
    straight-through) on the same logits, temperature and sample shape; median times."""
    from vitorch.families import RelaxedOneHotCategorical, RelaxedOneHotCategoricalStraightThrough

    batch, classes, k = (64, 10, 4) if args.quick else (1024, 10, 16)
    repeats = args.repeats or (3 if args.quick else 21)
    logits = torch.randn(batch, classes, requires_grad=True)
    temperature = torch.tensor(0.5)

    def ours():
        z, log_q = RelaxedOneHotCategorical(temperature, logits=logits).rsample_and_log_prob((k,))
        (z.sum() + log_q.sum()).backward()

    def torchs():
        q = torch.distributions.RelaxedOneHotCategorical(temperature, logits=logits)
        z = q.rsample((k,))
        (z.sum() + q.log_prob(z).sum()).backward()

    t = interleaved_medians({"vitorch": ours, "torch": torchs}, repeats)
    report(
        "mixflows", f"concrete/rsample_and_log_prob+backward/{batch}x{classes}x{k}", t["vitorch"], "torch", t["torch"]
    )
    pyro, why = try_import("pyro")

    def ours_st():
        h = RelaxedOneHotCategoricalStraightThrough(temperature, logits=logits).rsample((k,))
        (h * torch.arange(classes)).sum().backward()

    if pyro is None:
        report(
            "mixflows",
            f"concrete/straight_through_rsample+backward/{batch}x{classes}x{k}",
            median_time(ours_st, repeats),
            "pyro",
            None,
            skipped=why,
        )
        return
    import pyro.distributions as pd

    def pyro_st():
        h = pd.RelaxedOneHotCategoricalStraightThrough(temperature, logits=logits).rsample((k,))
        (h * torch.arange(classes)).sum().backward()

    t = interleaved_medians({"vitorch": ours_st, "pyro": pyro_st}, repeats)
    report(
        "mixflows", f"concrete/straight_through_rsample+backward/{batch}x{classes}x{k}", t["vitorch"], "pyro", t["pyro"]
    )


# ---------------------------------------------------------------- main


def main():
    p = parser(__doc__)
    args = p.parse_args()
    setup(args)
    torch.set_default_dtype(torch.float64)  # MixFlow's map runs in float64 anyway; flows alike
    if args.quick:
        cfg = dict(q0_steps=50, eps_grid=(0.05, 0.1), N=20, L=5, grid_draws=32, eval_draws=200, moment_draws=400)
    else:
        cfg = dict(
            q0_steps=400, eps_grid=(0.02, 0.05, 0.1), N=100, L=10, grid_draws=128, eval_draws=2000, moment_draws=4000
        )
    zuko, why = try_import("zuko")
    for name, (lp, mean, var) in TARGETS.items():
        torch.manual_seed(0)
        t0 = clock()
        q, info = fit_mixflow(lp, cfg)
        t_mix = clock() - t0
        t0 = clock()
        ev_mix = evaluate_mixflow(q, cfg)
        ev_mix["eval_s"] = clock() - t0

        torch.manual_seed(0)
        vflow = vitorch_nsf()
        t_vflow, steps_vflow = train_flow(vflow, lp, t_mix)
        t0 = clock()
        ev_vflow = evaluate_flow(vflow, lp, cfg)
        ev_vflow["eval_s"] = clock() - t0

        ev_zuko, t_zuko, steps_zuko = None, None, None
        if zuko is not None:
            torch.manual_seed(0)
            zflow = zuko_nsf(zuko)
            t_zuko, steps_zuko = train_flow(zflow, lp, t_mix)
            t0 = clock()
            ev_zuko = evaluate_flow(zflow, lp, cfg)
            ev_zuko["eval_s"] = clock() - t0

        values = {}
        for label, ev in (("mix", ev_mix), ("vflow", ev_vflow), ("zuko", ev_zuko)):
            if ev is None:
                continue
            mean_err, var_err = moment_errors(ev["x"], mean, var)
            values[label] = {
                "elbo": ev["elbo"],
                "kl": LOG_C - ev["elbo"],
                "mean_err": mean_err,
                "var_err": var_err,
                "elbo_se": ev["elbo_se"],
                "eval_s": ev["eval_s"],
            }
        for metric in ("elbo", "kl", "mean_err", "var_err"):
            extra = {
                "metric": metric,
                "vitorch": values["mix"][metric],
                "peer_value": values["zuko"][metric] if "zuko" in values else None,
                "vitorch_spline_flow": values["vflow"][metric],
                "vitorch_spline_flow_s": t_vflow,
                "clock": clock_name(),
                "mixflow": {"N": cfg["N"], "L": cfg["L"], "step_size": info["step_size"]},
            }
            if metric == "elbo":
                extra["se"] = {k: v["elbo_se"] for k, v in values.items()}
                extra["eval_s"] = {k: v["eval_s"] for k, v in values.items()}
                extra["train_steps"] = {"vitorch_spline_flow": steps_vflow, "zuko": steps_zuko}
            if zuko is None:
                extra["skipped"] = why
            report("mixflows", f"{name}/{metric}", t_mix, "zuko", t_zuko, **extra)
    concrete_cases(args)


if __name__ == "__main__":
    main()
