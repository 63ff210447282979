"""``Model``: a log-joint over named, constrained sites, seen as a density on ``R^D``.

The user writes ``log_joint(p)`` over a dict of constrained values; the model lays
the sites' unconstrained blocks side by side in one flat vector ``z [*sample, D]`` and
defines

    ``log_density(z) = log_joint(constrain(z)) + sum_sites log|det J_site(z)|``,

the density of the unconstrained parameters that every vitorch family and bound can
read (ADVI, Kucukelbir et al., 2017).  ``vt.loss(model.log_density, q, ...)`` is then
ordinary variational inference.

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational
    Inference* (JMLR 2017).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .site import Site

__all__ = ["Model"]


class Model(nn.Module):
    """A log-joint over named sites, with its unconstrained density ``log_density``.

    Args:
        log_joint: ``p -> log p(data, p)``, where ``p`` maps each site's name to its
            constrained value ``[*sample, *site_shape]`` and the result is
            ``[*sample]``.  It closes over the data.  If it is an ``nn.Module`` its
            parameters are the model's (empirical Bayes: ``vt.fit`` trains them with
            the guide).
        sites: ``{name: Site}`` in the order their blocks take in ``z``.
        validate_args: let ``torch.distributions`` check their arguments inside
            ``log_joint`` at every call.  Default ``False``: they are checked once, at the
            start (`check_init`, which every guide calls), and then skipped, because the
            constrained values are in their supports by construction and the checks cost
            a tenth to a fifth of a small model's training step.

    Attributes:
        dim: ``D``, the total unconstrained dimension.
        sites: the declared sites.
        slices: ``{name: slice}``, each site's block of ``z``'s last dimension.

    Raises:
        TypeError: if ``log_joint`` is not callable, ``sites`` not a mapping of
            ``str -> Site``.
        ValueError: if ``sites`` is empty.

    Example:
        >>> from torch.distributions import Normal, HalfCauchy, constraints as C
        >>> y = torch.tensor([28., 8., -3., 7., -1., 1., 18., 12.])
        >>> sigma = torch.tensor([15., 10., 16., 11., 9., 11., 10., 18.])
        >>> def log_joint(p):
        ...     return (Normal(0, 5).log_prob(p["mu"]) + HalfCauchy(5).log_prob(p["tau"])
        ...             + Normal(p["mu"][..., None], p["tau"][..., None]).log_prob(p["theta"]).sum(-1)
        ...             + Normal(p["theta"], sigma).log_prob(y).sum(-1))
        >>> model = Model(log_joint, sites={"mu": Site(), "tau": Site(constraint=C.positive),
        ...                                 "theta": Site(shape=(8,))})
        >>> model.dim, model.log_density(torch.zeros(5, model.dim)).shape
        (10, torch.Size([5]))

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017), sec. 2.3.
    """

    def __init__(
        self,
        log_joint: Callable[[dict[str, Tensor]], Tensor],
        sites: Mapping[str, Site],
        validate_args: bool = False,
    ):
        super().__init__()
        if not callable(log_joint):
            raise TypeError(f"Model: log_joint must be callable; got {type(log_joint).__name__}")
        if not isinstance(sites, Mapping):
            raise TypeError(f"Model: sites must be a dict of name -> Site; got {type(sites).__name__}")
        if not sites:
            raise ValueError("Model: sites is empty; declare at least one Site")
        for name, site in sites.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"Model: site names must be non-empty strings; got {name!r}")
            if not isinstance(site, Site):
                raise TypeError(f"Model: sites[{name!r}] must be a vitorch Site; got {type(site).__name__}")
        if not isinstance(validate_args, bool):
            raise TypeError(f"Model: validate_args must be a bool; got {type(validate_args).__name__}")
        self.log_joint = log_joint
        self.validate_args = validate_args
        self.sites: dict[str, Site] = dict(sites)
        self.slices: dict[str, slice] = {}
        start = 0
        for name, site in self.sites.items():
            self.slices[name] = slice(start, start + site.size)
            start += site.size
        self.dim = start

    # ----- flat unconstrained vector <-> named constrained values --------------------------

    def _check_z(self, z, who: str) -> Tensor:
        if not isinstance(z, Tensor):
            raise TypeError(f"Model.{who}: z must be a tensor [*sample, D]; got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"Model.{who}: z must be floating point; got dtype {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"Model.{who}: z must end in D = {self.dim}; got shape {tuple(z.shape)}")
        return z

    def _blocks(self, z: Tensor):
        """``(name, site, u [*sample, *unconstrained_shape])`` for every site."""
        sample = z.shape[:-1]
        for name, site in self.sites.items():
            yield name, site, z[..., self.slices[name]].reshape(*sample, *site.unconstrained_shape)

    def constrain_and_ladj(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``z [*sample, D]`` -> (``{name: [*sample, *shape]}``, summed log-Jacobian ``[*sample]``)."""
        return self._constrain_and_ladj(self._check_z(z, "constrain_and_ladj"))

    def _constrain_and_ladj(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        values, ladj = {}, z.new_zeros(z.shape[:-1])
        for name, site, u in self._blocks(z):
            values[name], site_ladj = site.bijection.forward_and_ladj(u)
            ladj = ladj + site_ladj
        return values, ladj

    def constrain(self, z: Tensor) -> dict[str, Tensor]:
        """``z [*sample, D]`` unconstrained -> ``{name: value [*sample, *site_shape]}`` constrained."""
        z = self._check_z(z, "constrain")
        return {name: site.bijection.forward_and_ladj(u)[0] for name, site, u in self._blocks(z)}

    def unconstrain(self, values: Mapping[str, Tensor]) -> Tensor:
        """``{name: value [*sample, *site_shape]}`` -> ``z [*sample, D]``, the inverse of `constrain`.

        Raises:
            ValueError: for a missing or unknown name, a value of the wrong shape, or
                one outside its site's support.
        """
        if not isinstance(values, Mapping) or set(values) != set(self.sites):
            got = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise ValueError(f"Model.unconstrain: need exactly the sites {list(self.sites)}; got {got}")
        blocks, sample = [], None
        for name, site in self.sites.items():
            x = torch.as_tensor(values[name])
            n = len(site.shape)
            if tuple(x.shape[x.dim() - n :]) != tuple(site.shape) or x.dim() < n:
                raise ValueError(f"Model.unconstrain: {name} must end in {tuple(site.shape)}; got {tuple(x.shape)}")
            here = x.shape[: x.dim() - n]
            if sample is not None and here != sample:
                raise ValueError(f"Model.unconstrain: sample shapes differ: {tuple(sample)} and {tuple(here)} ({name})")
            sample = here
            if not bool(torch.as_tensor(site.constraint.check(x)).all()):
                raise ValueError(f"Model.unconstrain: {name} is outside its support {site.constraint}")
            blocks.append(site.bijection.inverse(x).reshape(*sample, site.size))
        return torch.cat(blocks, -1)

    def init(self, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """``[D]`` the feasible starting point: each site's ``init`` (unconstrained) or its canonical ``u = 0``."""
        dtype = dtype or torch.get_default_dtype()
        return torch.cat([site.init_unconstrained(dtype, device) for site in self.sites.values()])

    # ----- the density ---------------------------------------------------------------------

    def log_density(self, z: Tensor) -> Tensor:
        """``log p(data, constrain(z)) + log|det J|``: ``z [K, *batch, D] -> [K, *batch]``.

        The unconstrained density that a family on ``R^D`` approximates; pass it to
        ``vt.loss`` as the log-joint.

        Raises:
            TypeError: if ``z`` is not a floating tensor or ``log_joint`` returns no tensor.
            ValueError: if ``z`` does not end in ``D`` or ``log_joint`` returns the wrong shape.
        """
        return self._log_density(z, self.validate_args)

    def _log_density(self, z: Tensor, validate: bool) -> Tensor:
        values, ladj = self._constrain_and_ladj(self._check_z(z, "log_density"))
        if validate or torch.compiler.is_compiling():  # a compiled graph holds no checks anyway
            log_p = self.log_joint(values)
        else:
            old = Distribution._validate_args
            Distribution.set_default_validate_args(False)
            try:
                log_p = self.log_joint(values)
            finally:
                Distribution.set_default_validate_args(old)
        if not isinstance(log_p, Tensor):
            raise TypeError(f"log_joint must return a tensor [*sample]; got {type(log_p).__name__}")
        if log_p.shape != z.shape[:-1]:
            raise ValueError(
                f"log_joint must return shape {tuple(z.shape[:-1])} (one value per draw, the sample shape of "
                f"its inputs); got {tuple(log_p.shape)}. Reduce over the data and the site dimensions."
            )
        return log_p + ladj

    def forward(self, z: Tensor) -> Tensor:
        """Same as `log_density`: ``z [*sample, D] -> [*sample]``."""
        return self.log_density(z)

    def check_init(self, z0: Tensor | None = None) -> Tensor:
        """Evaluate the density at the start ``z0 [D]`` (default `init`); raise if it is not finite.

        Returns:
            the 0-d log-density at ``z0``.

        Raises:
            ValueError: naming the start's constrained values, so an infeasible start
                never turns into a silent NaN fit.
        """
        z0 = self.init() if z0 is None else z0
        with torch.no_grad():
            value = self._log_density(z0.unsqueeze(0), validate=True)[0]
        if not bool(torch.isfinite(value)):
            start = {k: v[0].tolist() for k, v in self.constrain(z0.unsqueeze(0)).items()}
            raise ValueError(
                f"the model's log density is {value.item()} at the starting point {start}; give each "
                "Site an init inside the region where log_joint is finite (Site(init=...))"
            )
        return value

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sites={{{', '.join(f'{k!r}: {v!r}' for k, v in self.sites.items())}}}"
