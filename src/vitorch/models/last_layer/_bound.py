"""The deterministic VBLL objective shared by the heads, and its minibatch form as a ``LossOutput``.

Every head's bound is a sum of per-datum terms minus a global penalty (Harrison, Willes &
Snoek, ICLR 2024): ``ELBO = sum_n t_n - KL`` for the whole data set, where ``t_n`` is
(a closed-form bound on) ``E_q log p(y_n | phi_n, ...)``.  A learned noise adds its log
prior, ``ELBO + log p(noise)``, so the penalty is ``KL - log p(noise)``.  For a minibatch
of ``B`` out of ``N`` data the head's `DeterministicBound.loss` returns
`vitorch.LossOutput.from_terms`: ``bound_n = t_n - penalty / N`` and ``loss =
-mean(bound)``, whose expectation over minibatches is ``-(ELBO + log p(noise)) / N``.
"""

from __future__ import annotations

from torch import Tensor

from ...loss import LossOutput
from . import _checks


class DeterministicBound:
    """Mixin: ``terms``, ``elbo`` and ``loss`` from ``_per_datum(phi, y) [N]``, ``kl()`` and ``noise_log_prior()``.

    A head defines ``_per_datum`` (its per-datum terms ``t_n``, inputs checked) and ``kl``;
    it overrides ``noise_log_prior`` when its noise has a prior, and ``terms`` when a
    kernel computes both parts at once.
    """

    def noise_log_prior(self) -> Tensor | float:
        """``log p(noise)``: zero for heads whose noise has no regularizing prior."""
        return 0.0

    def terms(self, phi: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(t_n [N], penalty [])`` with ``penalty = KL - log p(noise)``.

        Args:
            phi: ``[N, D]`` features.
            y: ``[N, ...]`` targets (labels for the classification heads).
        """
        return self._per_datum(phi, y), self.kl() - self.noise_log_prior()

    def elbo(self, phi: Tensor, y: Tensor) -> Tensor:
        """``sum_n t_n - KL``, the deterministic ELBO summed over the data (scalar).

        Args:
            phi: ``[N, D]`` features.
            y: ``[N, ...]`` targets (labels for the classification heads).
        """
        return self._per_datum(phi, y).sum() - self.kl()

    def loss(self, phi: Tensor, y: Tensor, num_data: int) -> LossOutput:
        """The minibatch bound as a `vitorch.LossOutput` (`vitorch.LossOutput.from_terms`).

        ``bound [B] = t_n - penalty / N`` and ``loss = -mean(bound)``.

        Args:
            phi: ``[B, D]`` minibatch features.
            y: ``[B, ...]`` minibatch targets.
            num_data: N, the size of the training set, which weighs the penalty.
        """
        _checks.num_data(type(self).__name__, num_data, phi.shape[0] if isinstance(phi, Tensor) else 0)
        expected, penalty = self.terms(phi, y)
        return LossOutput.from_terms(expected, penalty, num_data)
