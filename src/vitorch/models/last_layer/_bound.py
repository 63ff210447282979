"""The deterministic VBLL objective shared by the heads that have no fused path.

Every head's bound is a sum of per-datum terms minus a KL (Harrison, Willes &
Snoek, ICLR 2024): ``ELBO = sum_n t_n - KL`` for the whole data set, and for a
minibatch of ``B`` out of ``N`` data the scaled loss
``-(mean_batch t_n + (log p(noise) - KL) / N)``, whose expectation over
minibatches is ``-ELBO / N`` plus the noise prior.
"""

from __future__ import annotations

from torch import Tensor

from . import _checks


class DeterministicBound:
    """Mixin: ``elbo`` and ``loss`` from ``_per_datum(phi, y) [N]``, ``kl()`` and ``noise_log_prior()``.

    A head defines ``_per_datum`` (its per-datum terms ``t_n``) and ``kl``; it
    overrides ``noise_log_prior`` when its noise has a prior.
    """

    def noise_log_prior(self) -> Tensor | float:
        """``log p(noise)``: zero for heads whose noise has no regularizing prior."""
        return 0.0

    def elbo(self, phi: Tensor, y: Tensor) -> Tensor:
        """``sum_n t_n - KL``, the deterministic ELBO summed over the data (scalar).

        Args:
            phi: ``[N, D]`` features.
            y: ``[N, ...]`` targets (labels for the classification heads).
        """
        return self._per_datum(phi, y).sum() - self.kl()

    def loss(self, phi: Tensor, y: Tensor, num_data: int) -> Tensor:
        """Scaled minibatch loss ``-(mean_batch t_n + (log p(noise) - KL) / N)`` (scalar).

        Args:
            phi: ``[B, D]`` minibatch features.
            y: ``[B, ...]`` minibatch targets.
            num_data: N, the size of the training set, which weighs the KL.
        """
        _checks.num_data(type(self).__name__, num_data, phi.shape[0] if isinstance(phi, Tensor) else 0)
        return -(self._per_datum(phi, y).mean() + (self.noise_log_prior() - self.kl()) / num_data)
