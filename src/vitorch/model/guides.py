"""Automatic guides: learnable families on a model's unconstrained space ``R^D``.

``AutoGuide(model, kind)`` is an ``nn.Module`` holding the variational parameters;
calling it returns a vitorch family (``DiagNormal``, ``FullRankNormal``,
``LowRankNormal``, ``Flow``) with batch shape ``()`` and event shape ``[D]``.  Every
family has ``detach()``, so STL and DReG work with every guide.

Defaults, and why (learned from fitting standard posteriors against NUTS references):

* every guide starts at the model's feasible point (``Site(init=...)`` or each
  constraint's canonical point) or at the MAP (``init_loc="map"``), with scale 0.1;
* the full-rank factor is ``diag(scale) (I + strictly-lower)``: the scale and the
  correlation shape are separate parameters, so Adam's per-parameter steps do not tie
  a row's size to its correlations.  At equal budget this reached 0.15 / 0.05 posterior
  sd mean error on stochastic volatility / item response where ``strictly-lower +
  diag(exp)`` reached 0.90 / 0.135;
* a flow ends in a learned affine layer ``z = loc + scale * y``, so it can start at a
  chosen location and scale and its other layers work on a standardized ``y``: a spline
  layer's fixed interval ``[-bound, bound]`` is then measured in posterior standard
  deviations, not in the model's units (a spline on the raw scale never sampled eight
  schools' ``mu`` above its bound of 5);
* the default flow is two affine couplings (RealNVP) whose networks' output layers
  start at zero, so the flow starts as the identity and the guide as a diagonal
  Gaussian at the start point, and every early step is a small change of shape.
  With STL, spline couplings at ``lr = 0.01`` diverged on eight schools (gradient norms
  growing 1000-fold within 100 steps) where affine couplings converged; ask for
  ``layers="spline"`` explicitly.  Four randomly initialized couplings at ``lr = 0.01``
  and one particle blew up on eight schools (non-centred) and on a 31-dimensional
  logistic regression after a thousand steps or more, or settled in a collapsed fit,
  depending on the seed; two identity-started couplings at ``lr = 0.005`` fitted both
  on every seed tried.  The couplings' networks are 32 wide whatever ``D``: at
  ``2 D`` wide the same recipe blew up on a 121-dimensional item-response model;
* ``default_lr``: 0.02 for the Gaussians, 0.005 for flows.

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational
    Inference* (JMLR 2017): mean-field and full-rank Gaussian guides on the unconstrained space.
    Ong, Nott & Smith, *Gaussian Variational Approximation with a Factor Covariance
    Structure* (JCGS 2018): the low-rank guide.
    Durkan, Bekasov, Murray & Papamakarios, *Neural Spline Flows* (NeurIPS 2019).
    Agrawal, Sheldon & Domke, *Advances in Black-Box VI: Normalizing Flows, Importance
    Weighting, and Optimization* (NeurIPS 2020): flow guides for Bayesian models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..families import DiagNormal, Flow, FullRankNormal, LowRankNormal
from ..families.transform import Transform
from ..flows import MAF, AffineCoupling, Permutation, RQSpline, SplineCoupling
from .mode import find_map
from .model import Model

__all__ = ["AutoGuide", "AutoDiagNormal", "AutoFullRankNormal", "AutoLowRankNormal", "AutoFlow", "Standardize"]


class AutoGuide(nn.Module):
    """A learnable family on a `vitorch.model.Model`'s unconstrained space.

    ``AutoGuide(model, kind)`` builds the guide of that kind: ``"diag"``
    (`AutoDiagNormal`), ``"full"`` (`AutoFullRankNormal`),
    ``"lowrank"`` (`AutoLowRankNormal`), ``"flow"`` (`AutoFlow`) or
    ``"laplace"`` (`vitorch.model.AutoLaplace`); each class can also be built
    directly.  ``guide()`` returns the family, batch shape ``()`` and event ``[D]``.

    Args:
        model: the model.
        kind: the guide's name (see above).
        init_loc: where the guide starts: ``None`` (the model's feasible point),
            ``"map"`` (the mode found by `vitorch.model.find_map`) or a ``[D]`` tensor.
        init_scale: the starting standard deviation on the unconstrained scale.
        dtype: the parameters' dtype (default torch's default dtype).

    Attributes:
        default_lr: a learning rate for Adam that works on standard posteriors.

    Raises:
        ValueError: for an unknown kind, a non-positive ``init_scale``, a start of the
            wrong shape or one where the model's density is not finite.
        TypeError: if ``model`` is not a `vitorch.model.Model`.

    Example:
        >>> guide = AutoGuide(model, "full")
        >>> out = vt.loss(model.log_density, guide(), num_particles=8, estimator=vt.estimators.stl)

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017).
    """

    kind = ""
    default_lr = 0.02
    _kinds: dict[str, type[AutoGuide]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            AutoGuide._kinds[cls.kind] = cls

    def __new__(cls, model=None, kind: str | None = None, *args, **kwargs):
        if cls is AutoGuide:
            if kind not in AutoGuide._kinds:
                raise ValueError(f"AutoGuide: kind must be one of {sorted(AutoGuide._kinds)}; got {kind!r}")
            cls = AutoGuide._kinds[kind]
        return super().__new__(cls)

    def __init__(
        self,
        model: Model,
        kind: str | None = None,
        *,
        init_loc: Tensor | str | None = None,
        init_scale: float = 0.1,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not isinstance(model, Model):
            raise TypeError(f"{type(self).__name__}: model must be a vitorch Model; got {type(model).__name__}")
        if kind is not None and kind != self.kind:
            raise ValueError(f"{type(self).__name__} is the {self.kind!r} guide; got kind={kind!r}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"{type(self).__name__}: init_scale must be a finite number > 0; got {init_scale!r}")
        self.__dict__["model"] = model  # a reference, not a submodule: the guide's state is its own
        self.dim = model.dim
        dtype = dtype or torch.get_default_dtype()
        self.init_scale = float(init_scale)
        self._z0 = self._start(model, init_loc, dtype)

    def _start(self, model: Model, init_loc, dtype: torch.dtype) -> Tensor:
        if init_loc is None:
            z0 = model.init(dtype)
        elif isinstance(init_loc, str):
            if init_loc != "map":
                raise ValueError(
                    f"{type(self).__name__}: init_loc must be None, 'map' or a [D] tensor; got {init_loc!r}"
                )
            z0 = find_map(model, model.init(dtype))
        elif isinstance(init_loc, Tensor) and init_loc.shape == (model.dim,) and init_loc.is_floating_point():
            z0 = init_loc.detach().to(dtype)
        else:
            got = tuple(init_loc.shape) if isinstance(init_loc, Tensor) else type(init_loc).__name__
            raise ValueError(
                f"{type(self).__name__}: init_loc must be a floating [D] = [{model.dim}] tensor; got {got}"
            )
        model.check_init(z0)
        return z0

    def forward(self):
        """The family: batch shape ``()``, event shape ``[D]``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class AutoDiagNormal(AutoGuide):
    """Mean-field Gaussian ``N(loc, diag(exp(log_scale))^2)`` (ADVI's mean-field family).

    Parameters: ``loc [D]``, ``log_scale [D]``.  See `AutoGuide` for the arguments.

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017), sec. 2.4.
    """

    kind = "diag"

    def __init__(self, model: Model, kind: str | None = None, **options):
        super().__init__(model, kind, **options)
        self.loc = nn.Parameter(self._z0.clone())
        self.log_scale = nn.Parameter(torch.full_like(self._z0, math.log(self.init_scale)))

    def forward(self) -> DiagNormal:
        return DiagNormal(self.loc, self.log_scale.exp(), validate_args=False)


class AutoFullRankNormal(AutoGuide):
    """Full-rank Gaussian with Cholesky factor ``diag(exp(log_scale)) (I + strictly_lower(lower))``.

    Parameters: ``loc [D]``, ``log_scale [D]`` (the factor's diagonal, in logs) and
    ``lower [D, D]`` (only its strictly lower triangle is read; it starts at zero).
    Separating the scale from the correlation shape is what made this guide converge
    on hard posteriors (see the module docstring).  See `AutoGuide` for the arguments.

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017), sec. 2.5.
        Titsias & Lázaro-Gredilla, *Doubly Stochastic Variational Bayes* (ICML 2014).
    """

    kind = "full"

    def __init__(self, model: Model, kind: str | None = None, **options):
        super().__init__(model, kind, **options)
        self.loc = nn.Parameter(self._z0.clone())
        self.log_scale = nn.Parameter(torch.full_like(self._z0, math.log(self.init_scale)))
        self.lower = nn.Parameter(torch.zeros(self.dim, self.dim, dtype=self._z0.dtype))
        self.register_buffer("eye", torch.eye(self.dim, dtype=self._z0.dtype), persistent=False)
        # A 0/1 mask in place of ``tril(-1)``: the same values and gradient, but one vectorized
        # product instead of torch's tril kernel, which on a CPU costs ~0.1 ms per call at D ~ 100
        # (twice per step with its backward).
        strict = torch.ones(self.dim, self.dim, dtype=self._z0.dtype).tril(-1)
        self.register_buffer("strict_lower", strict, persistent=False)

    def scale_tril(self) -> Tensor:
        """``[D, D]`` the Cholesky factor ``diag(scale) (I + strictly_lower)``."""
        return self.log_scale.exp().unsqueeze(-1) * (self.eye + self.lower * self.strict_lower)

    def forward(self) -> FullRankNormal:
        return FullRankNormal(self.loc, self.scale_tril(), validate_args=False)


class AutoLowRankNormal(AutoGuide):
    """Gaussian with covariance ``diag(s) (F F^T + I) diag(s)``, ``s = exp(log_scale)``, ``F [D, R]``.

    Args:
        rank: ``R`` (default ``ceil(sqrt(D))``).
        **options: see `AutoGuide`.

    The factor is relative to the scale, as the full-rank guide's is; ``F`` starts at
    small random values (a zero factor would receive no gradient from the entropy).

    References:
        Ong, Nott & Smith, *Gaussian Variational Approximation with a Factor Covariance
        Structure* (JCGS 2018).
    """

    kind = "lowrank"

    def __init__(self, model: Model, kind: str | None = None, *, rank: int | None = None, **options):
        super().__init__(model, kind, **options)
        rank = math.ceil(math.sqrt(self.dim)) if rank is None else rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"AutoLowRankNormal: rank must be an integer >= 1; got {rank!r}")
        self.rank = rank
        self.loc = nn.Parameter(self._z0.clone())
        self.log_scale = nn.Parameter(torch.full_like(self._z0, math.log(self.init_scale)))
        self.factor = nn.Parameter(0.1 * torch.randn(self.dim, rank, dtype=self._z0.dtype) / math.sqrt(rank))

    def forward(self) -> LowRankNormal:
        scale = self.log_scale.exp()
        return LowRankNormal(self.loc, scale.unsqueeze(-1) * self.factor, scale.pow(2), validate_args=False)


class Standardize(Transform):
    """``z = loc + exp(log_scale) * y``, the last layer of an `AutoFlow`.

    Shapes: ``y, z [*shape, D]``, ``ladj [*shape]``.  Its parameters ``loc [D]`` and
    ``log_scale [D]`` start at the guide's ``init_loc`` and ``log(init_scale)``, so the
    flow before it works in standardized units.

    References:
        Papamakarios et al., *Normalizing Flows for Probabilistic Modeling and Inference* (JMLR 2021), sec. 3.
    """

    def __init__(self, loc: Tensor, scale: float):
        super().__init__(loc.shape[-1])
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(torch.full_like(self.loc, math.log(scale)))

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        return self.loc + self.log_scale.exp() * x, self.log_scale.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        return (y - self.loc) * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(y.shape[:-1])


def default_flow(
    dim: int,
    num_layers: int = 2,
    hidden: int | None = None,
    layers: str = "affine",
    bins: int = 8,
    bound: float = 5.0,
) -> list[Transform]:
    """The layers of an `AutoFlow`: ``[Transform]`` acting on ``[*shape, D]``.

    Couplings (one network pass in each direction, so the inverse that STL and DReG
    read is as cheap as sampling), alternating halves, with a fixed permutation after
    every pair when ``D > 2``: affine (RealNVP, ``layers="affine"``) or
    rational-quadratic spline (``layers="spline"``, ``bins`` bins on ``[-bound, bound]``).
    For ``D = 1``, where a coupling has nothing to condition on, spline MAF layers.
    Every layer's network ends in a zero-initialized linear layer, so each layer (affine
    or spline: a spline with raw parameters zero is the identity) starts as the identity.

    References:
        Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP* (ICLR 2017);
        Durkan et al., *Neural Spline Flows* (NeurIPS 2019); Agrawal, Sheldon & Domke,
        *Advances in Black-Box VI* (NeurIPS 2020): RealNVP guides with STL.
    """
    if layers not in ("affine", "spline"):
        raise ValueError(f"default_flow: layers must be 'affine' or 'spline'; got {layers!r}")
    width = hidden or 32
    if dim == 1:
        return [MAF(1, RQSpline(bins, bound), hidden=(width, width)) for _ in range(num_layers)]
    generator = torch.Generator().manual_seed(dim)  # a fixed mixing order, not a draw from the global stream
    out: list[Transform] = []
    for i in range(num_layers):
        if layers == "affine":
            out.append(AffineCoupling(dim, hidden=(width, width), swap=i % 2 == 1))
        else:
            out.append(SplineCoupling(dim, hidden=(width, width), swap=i % 2 == 1, bins=bins, bound=bound))
        if dim > 2 and i % 2 == 1 and i < num_layers - 1:
            out.append(Permutation(dim, torch.randperm(dim, generator=generator).tolist()))
    for layer in out:
        _start_at_identity(layer)
    return out


def _start_at_identity(layer: Transform) -> None:
    """Zero the output layer of ``layer``'s network: raw parameters 0 make an affine or a spline map the identity."""
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    if linears:
        with torch.no_grad():
            linears[-1].weight.zero_()
            linears[-1].bias.zero_()


class AutoFlow(AutoGuide):
    """A normalizing flow: standard normal base -> ``transforms`` -> `Standardize`.

    Calling it returns a `vitorch.Flow` with batch shape ``()`` and event ``[D]``:
    ``z = loc + scale * T(x)``, ``x ~ N(0, I_D)``.

    Args:
        transforms: `vitorch.flows.Transform` s of dimension ``D`` acting in
            standardized units (default `default_flow`: two affine couplings,
            started at the identity).
        num_layers, hidden, layers, bins, bound: options of `default_flow`
            (``layers="spline"`` for spline couplings).
        **options: see `AutoGuide`.

    ``default_lr`` is 0.005 (see the module notes: at 0.01 with one particle, fits
    diverged or collapsed depending on the seed).

    References:
        Rezende & Mohamed, *Variational Inference with Normalizing Flows* (ICML 2015);
        Durkan et al., *Neural Spline Flows* (NeurIPS 2019).
    """

    kind = "flow"
    default_lr = 0.005

    def __init__(
        self,
        model: Model,
        kind: str | None = None,
        *,
        transforms: Sequence[Transform] | None = None,
        num_layers: int = 2,
        hidden: int | None = None,
        layers: str = "affine",
        bins: int = 8,
        bound: float = 5.0,
        **options,
    ):
        super().__init__(model, kind, **options)
        if transforms is None:
            transforms = default_flow(self.dim, num_layers, hidden, layers, bins, bound)
        transforms = list(transforms)
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform) or t.dim != self.dim:
                raise ValueError(f"AutoFlow: transforms[{i}] must be a vitorch Transform of dim {self.dim}; got {t!r}")
        self.transforms = nn.ModuleList(transforms).to(self._z0.dtype)
        self.standardize = Standardize(self._z0, self.init_scale)
        self.register_buffer("base_loc", torch.zeros_like(self._z0), persistent=False)
        self.register_buffer("base_scale", torch.ones_like(self._z0), persistent=False)

    def forward(self) -> Flow:
        base = DiagNormal(self.base_loc, self.base_scale, validate_args=False)
        return Flow(base, [*self.transforms, self.standardize], validate_args=False)
