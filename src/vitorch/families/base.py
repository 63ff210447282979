"""The contract every vitorch variational family keeps.

A family is a `torch.distributions.Distribution` with three additions that
variational inference needs and torch does not provide:

* `Family.rsample_and_log_prob` draws reparameterized samples and their
  log-density in one pass (for a location-scale family the density follows from
  the noise, so no solve is needed);
* `Family.detach` returns the same distribution with its parameters cut
  from the graph.  ``q.detach().log_prob(z)`` is "log q at stopped parameters",
  which sticking-the-landing (Roeder et al., 2017) and DReG (Tucker et al., 2019)
  evaluate while ``z`` keeps its path to the parameters;
* `Family.rsample_and_stopped_log_prob` draws ``z`` and "log q at stopped
  parameters" together; a location-scale family reads the value from the noise,
  which stays exact where ``detach().log_prob(z)`` would solve an ill-conditioned
  system (see `vitorch.FullRankNormal`);
* parameter checks that raise `ValueError` naming the parameter and the
  constraint it breaks, including infinite values that torch's ``positive``
  constraint lets through, and an event of size 0; `as_params` raises
  `TypeError` for integer parameters and for dimensioned parameters of
  different floating dtypes.

`stopped` extends ``detach`` to plain torch distributions, so estimators
accept ``torch.distributions`` objects as well, and
`rsample_and_stopped_log_prob` does the same for the fused draw.

Half precision: where torch lacks a float16/bfloat16 kernel (triangular solves,
Cholesky factorizations, Gamma draws) the families compute in float32 and round the
result to the parameters' dtype, so such a result carries float32's accuracy up to
that final rounding (about 3 significant digits for float16).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, constraints
from torch.distributions.utils import lazy_property

__all__ = [
    "Family",
    "stopped",
    "rsample_and_stopped_log_prob",
    "as_params",
    "broadcast_params",
    "check_param",
    "LOW_PRECISION",
]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def as_params(family: str, **params) -> list[Tensor]:
    """The parameters as tensors of one floating dtype, or ``TypeError`` naming the culprit.

    A parameter that is a tensor must be floating point (an integer tensor would
    fail deep inside a sampler).  Tensors with at least one dimension must share one
    dtype; 0-d tensors and Python numbers take it (as torch's type promotion treats
    them), or the default dtype when no parameter is a tensor.
    """
    for name, v in params.items():
        if isinstance(v, Tensor) and not v.is_floating_point():
            raise TypeError(
                f"{family}: parameter {name} must be a floating-point tensor; got {v.dtype} "
                f"(convert it, e.g. {name}.float() or {name}.double())"
            )
    dimensioned = {k: v.dtype for k, v in params.items() if isinstance(v, Tensor) and v.dim() > 0}
    if len(set(dimensioned.values())) > 1:
        found = ", ".join(f"{k} {d}" for k, d in dimensioned.items())
        raise TypeError(f"{family}: parameters must share one floating dtype; got {found} (convert them with .to())")
    if dimensioned:
        dtype = next(iter(dimensioned.values()))
    else:
        scalars = [v.dtype for v in params.values() if isinstance(v, Tensor)]
        dtype = scalars[0] if scalars else torch.get_default_dtype()
        for d in scalars[1:]:
            dtype = torch.promote_types(dtype, d)
    out = []
    for v in params.values():
        if not isinstance(v, Tensor):
            v = torch.as_tensor(v, dtype=dtype)
        elif v.dtype != dtype:
            v = v.to(dtype)  # a 0-d tensor: promoted as torch would
        out.append(v)
    return out


def cast_value(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``log_prob``'s ``value`` in the family's dtype (an integer or other-precision value is converted)."""
    return value.to(dtype) if isinstance(value, Tensor) and value.dtype != dtype else value


def broadcast_params(**params: Tensor) -> list[Tensor]:
    """Broadcast parameters against each other, or raise ``ValueError`` giving every shape."""
    values = list(params.values())
    shape = values[0].shape
    for v in values:
        if v.shape != shape:
            break
    else:
        return values  # the common case in an amortized encoder: nothing to broadcast
    try:
        return list(torch.broadcast_tensors(*params.values()))
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in params.items())
        raise ValueError(f"parameter shapes do not broadcast: {shapes}") from None


def check_param(name: str, value: Tensor, constraint: str, ok: Tensor, family: str) -> None:
    """Raise ``ValueError`` if ``ok`` is not all true.

    ``ok`` is a boolean tensor computed by the caller, of ``value``'s shape or a
    prefix of it (one flag per vector or matrix); NaN must make it false.
    """
    if not bool(ok.all()):
        bad = value.detach()[~ok] if ok.shape == value.shape[: ok.dim()] else value.detach()
        raise ValueError(
            f"{family}: parameter {name} must satisfy {constraint}; "
            f"found invalid values such as {bad.flatten()[:4].tolist()} (shape {tuple(value.shape)})"
        )


class Family(Distribution):
    """Base class of vitorch's variational families.

    Subclasses implement ``rsample_and_log_prob`` (or inherit the generic one) and
    ``detach``.  Every sample-shaped result has the sample dimensions first:
    ``z`` is ``[*sample_shape, *batch_shape, *event_shape]`` and its log-density
    ``[*sample_shape, *batch_shape]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014).
        Rezende, Mohamed & Wierstra, *Stochastic Backpropagation and Approximate Inference in Deep
        Generative Models* (ICML 2014).
        Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017): the stopped log-density.
    """

    def _init_checked(
        self, batch_shape: torch.Size, event_shape: torch.Size, validate_args: bool | None, **params: Tensor
    ) -> None:
        """``Distribution.__init__`` with the parameter checks run on the *unbroadcast* ``params``.

        torch checks the broadcast attributes, which for a factor shared by a batch
        would materialize one ``[D, D]`` check per batch element; the flags are the
        same, so each distinct parameter is checked once here instead.
        """
        # An empty batch is a valid (empty) family whose draws and densities are empty;
        # vitorch.loss refuses it by name.  An event of size 0 has no coordinate to model
        # (and no simplex), so it is refused here.
        if 0 in event_shape:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in params.items())
            raise ValueError(
                f"{type(self).__name__}: the parameters ({shapes}) give an event of size 0 "
                f"(event shape {tuple(event_shape)}); a family needs at least one coordinate"
            )
        super().__init__(batch_shape, event_shape, validate_args=False)
        validate = Distribution._validate_args if validate_args is None else validate_args
        if not validate:
            return
        self._validate_args = True
        for name, value in params.items():
            constraint = self.arg_constraints[name]
            if isinstance(constraint, constraints.independent):
                # Elementwise flags, so that the message shows the offending entries.
                ok = constraint.base_constraint.check(value)
            else:
                ok = constraint.check(value)
            check_param(name, value, repr(constraint), ok, type(self).__name__)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Draw ``z`` by reparameterization and return ``(z, log q(z))``.

        Args:
            sample_shape: leading shape of the draw, e.g. ``(K,)`` particles.

        Returns:
            ``z`` of shape ``[*sample_shape, *batch_shape, *event_shape]`` and
            ``log_q`` of shape ``[*sample_shape, *batch_shape]``.  Both carry
            gradients to the parameters.
        """
        z = self.rsample(torch.Size(sample_shape))
        return z, self.log_prob(z)

    def rsample_and_stopped_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Draw ``z`` by reparameterization and return ``(z, log q(z))`` at stopped parameters.

        What sticking-the-landing and DReG read: ``log_q``'s value is ``log q(z)`` and its
        gradient reaches the parameters only through ``z`` (``detach().log_prob(z)``).
        A family whose draw is ``z = loc + A eps`` overrides this to read the value from
        ``eps``, which is exact, instead of solving ``A u = z - loc`` on the rounded ``z``.

        Args:
            sample_shape: leading shape of the draw, e.g. ``(K,)`` particles.

        Returns:
            ``z [*sample_shape, *batch_shape, *event_shape]`` and ``log_q [*sample_shape, *batch_shape]``.

        References:
            Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017);
            Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators* (ICLR 2019).
        """
        z = self.rsample(torch.Size(sample_shape))
        s = self.detach()
        s._validate_args = False  # z came from this family
        return z, s.log_prob(z)

    def detach(self) -> Family:
        """The same distribution with every parameter detached from the graph."""
        raise NotImplementedError(f"{type(self).__name__} does not implement detach()")


def stopped(q: Distribution) -> Distribution:
    """Return ``q`` with stopped parameters: ``stopped(q).log_prob(z)`` has no path to them.

    Works for vitorch families (through `Family.detach`), for
    ``Independent`` wrappers, and for torch distributions whose constructor takes
    exactly their ``arg_constraints`` (Normal, MultivariateNormal, Gamma, ...).

    Raises:
        ValueError: if ``q`` cannot be rebuilt with detached parameters.

    References:
        Roeder, Wu & Duvenaud, *Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference* (NeurIPS 2017).
        Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators* (ICLR 2019).
    """
    if isinstance(q, Family):
        return q.detach()
    if isinstance(q, Independent):
        return Independent(stopped(q.base_dist), q.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(q, MultivariateNormal):
        return MultivariateNormal(q.loc.detach(), scale_tril=q._unbroadcasted_scale_tril.detach(), validate_args=False)
    names = [k for k in q.arg_constraints if k in q.__dict__]
    # Alternative parametrizations (Bernoulli's probs/logits) are lazy properties of
    # the class; once read, both sit in __dict__ and the constructor takes only one.
    alternatives = [k for k in names if isinstance(getattr(type(q), k, None), lazy_property)]
    fixed = [k for k in names if k not in alternatives]
    attempts = [fixed + [k] for k in alternatives] if len(alternatives) > 1 else [names]
    for keys in attempts:
        try:
            return type(q)(**{k: getattr(q, k).detach() for k in keys}, validate_args=False)
        except (TypeError, ValueError):
            continue
    raise ValueError(
        f"cannot evaluate log_prob at stopped parameters for {type(q).__name__}; "
        "use a vitorch family or one whose constructor takes its arg_constraints"
    )


def rsample_and_stopped_log_prob(q: Distribution, sample_shape: torch.Size | tuple) -> tuple[Tensor, Tensor]:
    """``(z, log q(z) at stopped parameters)`` for a vitorch family or a torch distribution.

    A family's own `Family.rsample_and_stopped_log_prob`; otherwise
    ``q.rsample`` then ``stopped(q).log_prob``.  Shapes as in the method.

    References:
        Roeder, Wu & Duvenaud, *Sticking the Landing* (NeurIPS 2017).
    """
    if isinstance(q, Family):
        return q.rsample_and_stopped_log_prob(sample_shape)
    z = q.rsample(torch.Size(sample_shape))
    sq = stopped(q)
    sq._validate_args = False  # the particles came from q itself
    return z, sq.log_prob(z)
