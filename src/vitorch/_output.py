"""``LossOutput``: what every vitorch loss returns, and the one sign-and-scale convention.

Every model in vitorch (``vt.loss`` itself, the VAE, last-layer, GP and state-space
zoos, a user's module) reports its training objective the same way:

* ``bound [*batch]``: each datum's share of the full-data bound on ``log p``
  (detached).  For a Monte Carlo bound it is the bound of that datum; for a model
  with global latents it is ``E_q[log p(y_i | ...)] - KL / N``, so ``N * mean(bound)``
  estimates the full-data ELBO.
* ``loss``: the scalar to minimize, ``-mean(bound)`` in value for a lower bound
  (``+mean(bound)`` for an upper bound such as CUBO), with the estimator's gradient.

So losses are per datum: learning rates do not change with the data set size, and
``vt.fit`` logs and evaluates ``bound`` alike for every model.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["LossOutput"]


class LossOutput:
    """What `vitorch.loss` and every zoo model's ``forward(batch)`` return.

    Attributes:
        loss: scalar surrogate to minimize.  Its value is ``-mean(bound)`` for a lower
            bound and ``+mean(bound)`` for an upper bound (so minimizing tightens it);
            its gradient is the estimator's.
        bound: ``[*batch]`` the bound per datum (detached).  For a split objective,
            the model's bound.
        log_w: ``[K, *batch]`` detached log-weights (for diagnostics such as ESS), or
            ``None`` for a closed-form bound.
        z: ``[K, *batch, *event]`` the particles, still attached to the guide where the
            estimator is pathwise (InfoVAE's MMD term uses them), or ``None``.
        weights: ``[K, *batch]`` the particles' weights under a deterministic rule
            (enumeration, sigma points; detached), or ``None`` for K i.i.d. draws, each
            of weight ``1/K``.  Weighted diagnostics (an effective sample size) must use them.

    References:
        The value/gradient split ``a.detach() + (b - b.detach())`` is the surrogate-loss
        construction of Schulman, Heess, Weber & Abbeel, *Gradient Estimation Using
        Stochastic Computation Graphs* (NeurIPS 2015).
    """

    __slots__ = ("loss", "bound", "log_w", "z", "weights")

    def __init__(
        self,
        loss: Tensor,
        bound: Tensor,
        log_w: Tensor | None = None,
        z: Tensor | None = None,
        weights: Tensor | None = None,
    ):
        self.loss = loss
        self.bound = bound.detach() if bound.requires_grad else bound
        self.log_w = log_w.detach() if log_w is not None and log_w.requires_grad else log_w
        self.z = z
        self.weights = weights.detach() if weights is not None and weights.requires_grad else weights

    @classmethod
    def from_terms(cls, expected_log_lik: Tensor, kl: Tensor | float, num_data: int) -> LossOutput:
        """The output of a closed-form bound with global latents (a GP, a Bayesian last layer).

        Args:
            expected_log_lik: ``[B]`` each datum's ``E_q[log p(y_i | ...)]`` (with gradient).
            kl: scalar ``KL(q || p)`` of the global latents (with gradient), or 0.
            num_data: ``N``, the size of the full data set the batch was drawn from.

        Returns:
            ``bound = expected_log_lik - kl / N`` (``[B]``) and ``loss = -mean(bound)``:
            minimizing it is minimizing ``-ELBO / N`` on the full data in expectation.

        Raises:
            ValueError: if ``expected_log_lik`` is not a non-empty vector, ``kl`` not a
                scalar, or ``num_data`` not a positive integer.

        References:
            Hoffman, Blei, Wang & Paisley, *Stochastic Variational Inference* (JMLR 2013):
            the minibatch estimate of a global-latent ELBO.
        """
        if not isinstance(expected_log_lik, Tensor) or expected_log_lik.dim() != 1 or expected_log_lik.numel() == 0:
            got = tuple(expected_log_lik.shape) if isinstance(expected_log_lik, Tensor) else type(expected_log_lik)
            raise ValueError(f"from_terms: expected_log_lik must be a non-empty [B] tensor; got {got}")
        if isinstance(kl, Tensor) and kl.dim() != 0:
            raise ValueError(f"from_terms: kl must be a scalar; got shape {tuple(kl.shape)}")
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"from_terms: num_data must be a positive integer; got {num_data!r}")
        bound = expected_log_lik - kl / num_data
        return cls(-bound.mean(), bound)

    def __repr__(self) -> str:
        extra = "" if self.weights is None else f", weights={self.weights!r}"
        return f"LossOutput(loss={self.loss!r}, bound={self.bound!r}, log_w={self.log_w!r}, z={self.z!r}{extra})"
