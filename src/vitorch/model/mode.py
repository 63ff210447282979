"""The mode of a model's unconstrained density and the Hessian there: the Laplace approximation's parts.

``find_map`` maximizes ``model.log_density`` (Jacobians included, so this is the mode
on the unconstrained space, the centre of a Gaussian approximation there) with
L-BFGS or Adam; ``neg_hessian`` returns ``-grad^2 log_density`` at a point.

References:
    Tierney & Kadane, *Accurate Approximations for Posterior Moments and Marginal
    Densities* (JASA 1986): the Laplace approximation.
    Liu & Nocedal, *On the Limited Memory BFGS Method for Large Scale Optimization*
    (Mathematical Programming 1989).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .model import Model

__all__ = ["find_map", "neg_hessian"]


def _objective(model: Model):
    def neg_log_density(z: Tensor) -> Tensor:
        return -model.log_density(z.unsqueeze(0))[0]

    return neg_log_density


def find_map(
    model: Model,
    init: Tensor | None = None,
    *,
    method: str = "lbfgs",
    steps: int | None = None,
    lr: float | None = None,
) -> Tensor:
    """The mode of ``model.log_density``: ``[D]``, detached.

    Args:
        model: the model.
        init: ``[D]`` starting point (default ``model.init()``, which must be feasible).
        method: ``"lbfgs"`` (strong-Wolfe line search; a smooth density of moderate
            ``D``) or ``"adam"`` (robust where L-BFGS's line search fails).
        steps: L-BFGS iterations (default 500) or Adam steps (default 2000).
        lr: Adam's learning rate (default 0.05); L-BFGS uses 1 with its line search.

    Returns:
        ``[D]`` the unconstrained mode.

    Raises:
        ValueError: for an unknown method, or if the optimizer ends at a non-finite
            density (try the other method or a different ``Site(init=...)``).

    References:
        Liu & Nocedal (1989) for L-BFGS; Kingma & Ba, *Adam* (ICLR 2015).
    """
    if method not in ("lbfgs", "adam"):
        raise ValueError(f"find_map: method must be 'lbfgs' or 'adam'; got {method!r}")
    z0 = model.init() if init is None else init
    model.check_init(z0)
    z = z0.detach().clone().requires_grad_(True)
    f = _objective(model)
    if method == "lbfgs":
        opt = torch.optim.LBFGS(
            [z],
            lr=1.0,
            max_iter=steps or 500,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            history_size=50,
        )

        def closure():
            opt.zero_grad()
            loss = f(z)
            loss.backward()
            return loss

        try:
            opt.step(closure)
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"find_map: log_joint failed during the L-BFGS line search ({err}); the density may have no mode "
                "(a funnel, an improper posterior) or need method='adam'"
            ) from err
    else:
        opt = torch.optim.Adam([z], lr=lr or 0.05)
        for _ in range(steps or 2000):
            opt.zero_grad()
            loss = f(z)
            loss.backward()
            opt.step()
    z = z.detach()
    with torch.no_grad():
        value = -f(z)
    if not (bool(torch.isfinite(z).all()) and bool(torch.isfinite(value))):
        other = "adam" if method == "lbfgs" else "lbfgs"
        raise ValueError(
            f"find_map ({method}) ended at a non-finite point or density ({value.item()}); "
            f"try method={other!r} or a different Site(init=...)"
        )
    return z


def neg_hessian(model: Model, z: Tensor) -> Tensor:
    """``-grad^2 log_density(z)`` at ``z [D]``: ``[D, D]`` (symmetrized), by double backward.

    References:
        Tierney & Kadane, *Accurate Approximations for Posterior Moments and Marginal
        Densities* (JASA 1986): the Hessian that sets the Laplace approximation's covariance.
    """
    h = torch.autograd.functional.hessian(_objective(model), z.detach())
    return 0.5 * (h + h.mT)
