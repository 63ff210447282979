"""``check_family``: the battery every variational family passes.

A family is a `torch.distributions.Distribution` with ``rsample``; vitorch's
families add ``rsample_and_log_prob`` and a stopped-parameter ``log_prob``
(`vitorch.stopped`).  The battery checks, in float32 and float64:

* ``shapes``: ``sample``/``rsample`` give ``[*sample, *batch, *event]`` in the default
  dtype, ``log_prob`` gives ``[*sample, *batch]``, finite at the family's own draws;
* ``rsample_and_log_prob``: its ``log q`` equals ``log_prob`` of the same draws, in value
  and in its gradient to the parameters (also for ``rsample_with_correction``);
* ``stopped``: ``stopped(q).log_prob(z)`` equals ``q.log_prob(z)``, carries no gradient to
  the parameters, carries the score ``d log q / dz`` to ``z``, and through a
  reparameterized ``z`` gives ``score^T dz/dtheta`` (the sticking-the-landing gradient);
* ``gradients``: a pathwise loss ``sum(c z) + sum(log q)`` gives every parameter a
  finite gradient;
* ``expand``: ``q.expand((2, *batch))`` has that batch shape and the same ``log_prob``;
* ``save_load``: the parameters (or the module's ``state_dict``) written with
  ``torch.save`` and read with ``torch.load(weights_only=True)`` into a second copy
  built with other initial values reproduce ``log_prob``;
* ``mean``: where the family has a closed-form ``mean``, the mean of ``num_draws``
  draws lies within a derived number of standard errors of it.

Comparisons of one quantity computed two ways allow ``sqrt(eps) (1 + |value|)`` for
rounding (half the digits: the two paths may differ by a solve on a moderately
conditioned factor, or an iterative inverse); a wrong Jacobian or a missing term is
off by order one.

References:
    Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017): the stopped log-density.
    Papamakarios et al., *Normalizing Flows for Probabilistic Modeling and Inference* (JMLR 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from ..families import stopped
from ._params import Built, build, load_values, saved_values
from ._state import round_trip

__all__ = ["check_family", "FamilyCheckError"]

# Two-sided false-failure probability of the one statistical assertion (Z = 5.2 standard errors).
_P_FAIL = 2e-7


class FamilyCheckError(AssertionError):
    """A family failed one check of `check_family`; the message names the check, the family,
    the dtype and why (e.g. two shapes, or two values and the allowed difference).

    References:
        Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017): the stopped-parameter check.
    """


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _grads(out: Tensor, params: dict[str, Tensor], **kwargs) -> dict[str, Tensor | None]:
    names = list(params)
    if not out.requires_grad:  # nothing depends on the parameters (e.g. a log-density from the noise)
        return dict.fromkeys(names)
    got = torch.autograd.grad(out, [params[k] for k in names], allow_unused=True, **kwargs)
    return dict(zip(names, got))


class _Battery:
    def __init__(self, make_family: Callable, num_particles: int, seed: int, dtype: torch.dtype, num_draws: int):
        self.make_family, self.K, self.seed, self.dtype, self.num_draws = (
            make_family,
            num_particles,
            seed,
            dtype,
            num_draws,
        )
        self.tol = math.sqrt(torch.finfo(dtype).eps)
        self.name = "family"

    def fail(self, check: str, why: str) -> None:
        raise FamilyCheckError(f"check_family[{check}] {self.name} in {self.dtype}: {why}")

    def built(self, offset: int = 0) -> Built:
        torch.manual_seed(self.seed + offset)
        b = build(self.make_family)
        self.name = type(b.family).__name__
        return b

    def expect_shape(self, check: str, what: str, t: Tensor, shape: tuple) -> None:
        if tuple(t.shape) != tuple(shape):
            self.fail(check, f"{what} has shape {tuple(t.shape)}; expected {tuple(shape)}")

    def expect_close(self, check: str, what: str, a: Tensor, b: Tensor) -> None:
        a, b = a.detach(), b.detach()
        if a.shape != b.shape:
            self.fail(check, f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        err = (a - b).abs()
        allowed = self.tol * (1 + b.abs())
        if not bool((err <= allowed).all()):
            i = int(torch.argmax(err - allowed))
            self.fail(
                check,
                f"{what}: {a.flatten()[i].item():.10g} vs {b.flatten()[i].item():.10g} "
                f"(difference {err.flatten()[i].item():.3g} > allowed {allowed.flatten()[i].item():.3g})",
            )

    def expect_close_grads(self, check: str, what: str, a: dict, b: dict, params: dict) -> None:
        for k, p in params.items():
            ga = a[k] if a[k] is not None else torch.zeros_like(p)
            gb = b[k] if b[k] is not None else torch.zeros_like(p)
            self.expect_close(check, f"{what}, parameter {k}", ga, gb)

    # ----- the checks ----------------------------------------------------------------

    def shapes(self) -> str:
        b = self.built()
        q, K = b.family, self.K
        batch, event = tuple(q.batch_shape), tuple(q.event_shape)
        if not getattr(q, "has_rsample", False):
            self.fail("shapes", "has_rsample is False: check_family is for reparameterized families")
        if not b.params:
            self.fail(
                "parameters",
                "no parameters found (leaf tensors with requires_grad=True); build the family from such "
                "tensors, or return (family, params) or (module, context) from make_family",
            )
        with torch.no_grad():
            draws = {(): q.sample(), (K,): q.sample((K,)), (2, K): q.sample((2, K))}
        for sample_shape, s in draws.items():
            self.expect_shape("shapes", f"sample({sample_shape})", s, sample_shape + batch + event)
            if s.dtype != self.dtype:
                self.fail(
                    "shapes",
                    f"sample has dtype {s.dtype} under default dtype {self.dtype}: build the "
                    "family's tensors without a fixed dtype so it follows torch.get_default_dtype()",
                )
            lp = q.log_prob(s)
            self.expect_shape("shapes", f"log_prob of a sample({sample_shape})", lp, sample_shape + batch)
            if lp.dtype != self.dtype:
                self.fail("shapes", f"log_prob has dtype {lp.dtype}; expected {self.dtype}")
            if not bool(torch.isfinite(lp).all()):
                self.fail("shapes", f"log_prob is not finite at the family's own draws: {lp.flatten()[:6].tolist()}")
        if draws[(K,)].requires_grad:
            self.fail("shapes", "sample() carries a gradient; only rsample() may")
        z = q.rsample((K,))
        self.expect_shape("shapes", f"rsample(({K},))", z, (K,) + batch + event)
        if not z.requires_grad:
            self.fail("shapes", "rsample() carries no gradient to the parameters")
        return "passed"

    def rsample_and_log_prob(self) -> str:
        b = self.built()
        q, K, params = b.family, self.K, b.params
        if not hasattr(q, "rsample_and_log_prob"):
            return "skipped: the family has no rsample_and_log_prob"
        batch, event = tuple(q.batch_shape), tuple(q.event_shape)
        z, log_q = q.rsample_and_log_prob((K,))
        self.expect_shape("rsample_and_log_prob", "z", z, (K,) + batch + event)
        self.expect_shape("rsample_and_log_prob", "log_q", log_q, (K,) + batch)
        ref = q.log_prob(z)
        self.expect_close("rsample_and_log_prob", "log_q against log_prob(z)", log_q, ref)
        g_fused = _grads(log_q.sum(), params, retain_graph=True)
        g_ref = _grads(ref.sum(), params)
        self.expect_close_grads(
            "rsample_and_log_prob", "gradient of log_q against that of log_prob(z)", g_fused, g_ref, params
        )
        if hasattr(q, "rsample_with_correction"):
            z, log_q, log_corr = q.rsample_with_correction((K,))
            for what, t in (("z", z), ("log_q", log_q), ("log_corr", log_corr)):
                self.expect_shape(
                    "rsample_and_log_prob",
                    f"rsample_with_correction's {what}",
                    t,
                    (K,) + batch + (event if what == "z" else ()),
                )
            self.expect_close(
                "rsample_and_log_prob", "rsample_with_correction's log_q against log_prob(z)", log_q, q.log_prob(z)
            )
        return "passed"

    def stopped(self) -> str:
        b = self.built()
        q, params = b.family, b.params
        sp = stopped(q)
        z = q.rsample((self.K,))
        self.expect_close("stopped", "stopped(q).log_prob(z) against q.log_prob(z)", sp.log_prob(z), q.log_prob(z))
        zd = z.detach().requires_grad_(True)
        leaks = _grads(sp.log_prob(zd).sum(), {"z": zd, **params})
        leaked = [k for k, g in leaks.items() if k != "z" and g is not None and bool((g != 0).any())]
        if leaked:
            self.fail("stopped", f"stopped(q).log_prob(z) carries gradient to the parameters {leaked}")
        score = leaks["z"]
        if score is None or not bool(torch.isfinite(score).all()):
            self.fail("stopped", "stopped(q).log_prob(z) carries no finite gradient to z")
        (ref_score,) = torch.autograd.grad(q.log_prob(zd).sum(), zd)
        self.expect_close("stopped", "d stopped(q).log_prob(z) / dz against d q.log_prob(z) / dz", score, ref_score)
        # Through a reparameterized z the stopped log-density's gradient is score^T dz/dtheta.
        stl = _grads(sp.log_prob(z).sum(), params, retain_graph=True)
        expected = _grads(z, params, grad_outputs=score.detach())
        self.expect_close_grads(
            "stopped", "gradient of stopped(q).log_prob(rsample) against score^T dz/dtheta", stl, expected, params
        )
        return "passed"

    def gradients(self) -> str:
        b = self.built()
        q, params = b.family, b.params
        if hasattr(q, "rsample_and_log_prob"):
            z, log_q = q.rsample_and_log_prob((self.K,))
        else:
            z = q.rsample((self.K,))
            log_q = q.log_prob(z)
        c = torch.randn(z.shape, generator=torch.Generator().manual_seed(self.seed), dtype=z.dtype)
        grads = _grads((c * z).sum() + log_q.sum(), params)
        missing = [k for k, g in grads.items() if g is None]
        if missing:
            self.fail("gradients", f"a pathwise loss sum(c z) + sum(log q) gives no gradient to {missing}")
        bad = [k for k, g in grads.items() if not bool(torch.isfinite(g).all())]
        if bad:
            self.fail("gradients", f"non-finite gradients of a pathwise loss for {bad}")
        # A random c makes an exactly zero gradient a cut or cancelled path, not chance.
        zero = [k for k, g in grads.items() if not bool((g != 0).any())]
        if zero:
            self.fail("gradients", f"a pathwise loss sum(c z) + sum(log q) gives an all-zero gradient to {zero}")
        return "passed"

    def expand(self) -> str:
        b = self.built()
        q, K = b.family, self.K
        batch, event = tuple(q.batch_shape), tuple(q.event_shape)
        new = (2,) + batch
        qe = q.expand(torch.Size(new))
        if tuple(qe.batch_shape) != new or tuple(qe.event_shape) != event:
            self.fail(
                "expand",
                f"expand({new}) has batch {tuple(qe.batch_shape)} and event {tuple(qe.event_shape)}; "
                f"expected batch {new} and event {event}",
            )
        with torch.no_grad():
            self.expect_shape("expand", f"expand({new}).sample(({K},))", qe.sample((K,)), (K,) + new + event)
            z = q.sample((K,))
        wide = z.unsqueeze(1).expand((K,) + new + event)
        self.expect_close(
            "expand",
            "expanded log_prob against the original's",
            qe.log_prob(wide),
            q.log_prob(z).unsqueeze(1).expand((K,) + new),
        )
        if not qe.rsample((K,)).requires_grad:
            self.fail("expand", "the expanded family's rsample carries no gradient to the parameters")
        return "passed"

    def save_load(self) -> str:
        first = self.built()
        try:
            state = round_trip(saved_values(first))
        except Exception as err:  # torch.save and the weights_only unpickler raise their own kinds
            self.fail("save_load", f"the parameters do not survive torch.save/torch.load(weights_only=True): {err}")
        with torch.no_grad():
            z = first.family.sample((self.K,))
            expected = first.family.log_prob(z)
            second = self.built(offset=1)  # other initial values: log_prob must come from the loaded state
            got = load_values(second, state, first.context).log_prob(z)
        try:
            self.expect_close(
                "save_load", "log_prob after loading the saved parameters into a second copy", got, expected
            )
        except FamilyCheckError as err:
            hint = ""
            if second.module is not None and not second.callable_module:
                hint = " (a family computed from a module when it is built goes stale: return (module, context))"
            raise FamilyCheckError(f"{err}{hint}") from None
        return "passed"

    def mean(self) -> str:
        q = self.built().family
        try:
            mean = q.mean.detach()
        except NotImplementedError:
            return f"skipped: {self.name} has no closed-form mean"
        n = self.num_draws
        with torch.no_grad():
            x = q.sample((n,)).to(torch.float64)
        est, se = x.mean(0), x.std(0) / math.sqrt(n)
        # Bonferroni over the mean's entries: the whole check fails falsely with probability <= _P_FAIL.
        z = float(torch.special.ndtri(torch.tensor(1 - _P_FAIL / (2 * mean.numel()), dtype=torch.float64)))
        allowed = z * se + 4 * torch.finfo(self.dtype).eps * (mean.abs().to(torch.float64) + x.std(0))
        err = (est - mean.to(torch.float64)).abs()
        if not bool((err <= allowed).all()):
            i = int(torch.argmax(err - allowed))
            self.fail(
                "mean",
                f"the mean of {n} draws, {est.flatten()[i].item():.6g} (standard error {se.flatten()[i].item():.3g}), "
                f"is {err.flatten()[i].item() / max(se.flatten()[i].item(), 1e-300):.2f} standard errors from "
                f"q.mean = {mean.flatten()[i].item():.6g} (allowed {z:.2f}; false-failure rate {_P_FAIL:g})",
            )
        return "passed"


CHECKS = ("shapes", "rsample_and_log_prob", "stopped", "gradients", "expand", "save_load", "mean")


def check_family(
    make_family: Callable,
    *,
    num_particles: int = 3,
    seed: int = 0,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    checks: Sequence[str] = CHECKS,
    num_draws: int = 10_000,
) -> dict[str, str]:
    """Run the family battery on ``make_family()``; raise `FamilyCheckError` at the first failure.

    Args:
        make_family: a function of no arguments returning one of
            ``q`` (a family built from leaf tensors with ``requires_grad=True``: those
            are its parameters; a `vitorch.Flow`'s transforms' parameters count too),
            ``(q, params)`` (``params``: an ``nn.Module``, a dict ``{name: tensor}`` or a
            sequence of leaf tensors), or ``(module, context)`` where ``module(context)``
            (``module()`` for ``context=None``) returns the family, as for an amortized
            head or `vitorch.flows.ConditionalFlow`.  It is called under
            ``torch.manual_seed(seed)`` for each check and under ``seed + 1`` for the
            second copy of the save/load check, once per dtype in ``dtypes`` as torch's
            default dtype: build tensors without a fixed dtype, and apart from the
            parameters' initial values (and a ``(module, context)`` context) keep the
            family independent of the global seed.  Give it a batch shape (e.g. ``[3]``).
        num_particles: ``K``, the sample size of the shape and gradient checks.
        seed: the seed behind every draw; the caller's global RNG state is restored after.
        dtypes: default dtypes to run the battery in.
        checks: names of the checks to run (default all): ``shapes``,
            ``rsample_and_log_prob``, ``stopped``, ``gradients``, ``expand``,
            ``save_load``, ``mean``.
        num_draws: draws of the ``mean`` check.

    Returns:
        ``{"<check>[<dtype>]": "passed" | "skipped: <reason>"}`` for every check run.

    Raises:
        FamilyCheckError: an ``AssertionError`` naming the check, the family, the dtype and why.
        TypeError: if ``make_family`` returns something else than the three forms above.

    References:
        Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017): the stopped log-density and its gradient.
        Papamakarios et al., *Normalizing Flows for Probabilistic Modeling and Inference* (JMLR 2021).
        Dunn, *Multiple Comparisons Among Means* (JASA 1961): the Bonferroni bound of the mean check.

    Example:
        >>> def make():
        ...     loc = torch.zeros(3, 2, requires_grad=True)
        ...     raw = torch.zeros(3, 2, requires_grad=True)
        ...     return vt.DiagNormal(loc, torch.nn.functional.softplus(raw)), [loc, raw]
        >>> check_family(make)
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"check_family: unknown checks {unknown}; choose from {list(CHECKS)}")
    if int(num_particles) < 1:
        raise ValueError(f"check_family: num_particles must be >= 1; got {num_particles}")
    results = {}
    with torch.random.fork_rng(devices=[]):
        for dtype in dtypes:
            with _default_dtype(dtype):
                battery = _Battery(make_family, int(num_particles), seed, dtype, num_draws)
                for name in checks if "shapes" in checks else ("shapes", *checks):
                    results[f"{name}[{str(dtype).replace('torch.', '')}]"] = getattr(battery, name)()
    return results
