"""A VAE whose encoder starts on silent (zero-variance) gradients and is annealed to the stochastic estimator.

Shao, Liu & Van den Broeck (2025) observe that for a linear-Gaussian decoder the ELBO is a
closed-form function of the encoder's output (`vitorch.silent.expected_log_lik`), so its
gradient has no estimation variance.  Their recipe trains an auxiliary linear decoder
beside the expressive one and gives the encoder the mixture

    g_encoder = lam_t * g_silent + (1 - lam_t) * g_stochastic,

``g_silent`` from the analytic ELBO of the linear decoder, ``g_stochastic`` from the
usual estimator through the expressive decoder, with ``lam_t`` annealed from 1 to 0
(`vitorch.silent.anneal`).  Each decoder keeps its own full gradient
(`vitorch.silent.split`, `vitorch.silent.combine`).  After the annealing
the model is an ordinary VAE; the linear decoder is then a passenger (its loss is still
added, but it no longer reaches the encoder).

The schedule reads a step counter kept in the module's ``state_dict`` (a buffer that
every training-mode forward advances), so checkpoints resume the schedule exactly.
The linear decoder is Gaussian, whatever the expressive likelihood is; on binary images
it scores the pixels as real numbers, which is all a guide for the encoder needs.

References:
    Shao, Liu & Van den Broeck, *Zero-Variance Gradients for Variational Autoencoders*
    (arXiv:2508.03587, 2025).
"""

from __future__ import annotations

import torch

from ... import silent
from ...loss import LossOutput, loss
from .model import VAE

__all__ = ["SilentVAE"]


class SilentVAE(VAE):
    """A `vitorch.models.vae.VAE` with an auxiliary linear decoder guiding the encoder early (module notes).

    Args:
        encoder, decoder, likelihood, latent_dim: as for `VAE`.
        observed_dim: ``O``, the flattened data size the linear decoder predicts.
        anneal_steps: training steps over which ``lam`` falls linearly from ``start`` to 0.
        hold: steps at ``lam = start`` before the fall.
        start: the silent gradient's initial share, in ``[0, 1]``.
        options: the rest of `VAE`'s options (objective, estimator, K, ...).

    Shapes: ``x [B, *event]`` -> ``out.loss`` scalar (the two losses' sum), ``out.bound [B]``
    (the expressive model's bound), ``out.log_w [K, B]``, ``out.z [K, B, D]``.

    Raises:
        ValueError: for ``anneal_steps < 1``, a negative ``hold``, ``start`` outside
            ``[0, 1]`` or a bad ``observed_dim``.

    References:
        Shao, Liu & Van den Broeck, *Zero-Variance Gradients for Variational Autoencoders* (2025).
    """

    def __init__(
        self,
        encoder,
        decoder,
        likelihood=None,
        latent_dim=None,
        observed_dim: int | None = None,
        anneal_steps: int = 2000,
        hold: int = 0,
        start: float = 1.0,
        **options,
    ):
        reasons = []
        if isinstance(observed_dim, bool) or not isinstance(observed_dim, int) or observed_dim < 1:
            reasons.append(f"observed_dim must be an integer >= 1; got {observed_dim!r}")
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 1:
            reasons.append(f"anneal_steps must be an integer >= 1; got {anneal_steps!r}")
        if isinstance(hold, bool) or not isinstance(hold, int) or hold < 0:
            reasons.append(f"hold must be an integer >= 0; got {hold!r}")
        if not (isinstance(start, (int, float)) and 0.0 <= start <= 1.0):
            reasons.append(f"start must lie in [0, 1]; got {start!r}")
        if reasons:
            raise ValueError("invalid SilentVAE set-up:\n  - " + "\n  - ".join(reasons))
        super().__init__(encoder, decoder, likelihood, latent_dim, **options)
        self.linear_decoder = silent.LinearGaussianDecoder(self.latent_dim, observed_dim)
        self.anneal_steps, self.hold, self.start = anneal_steps, hold, float(start)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def silent_share(self) -> float:
        """``lam_t`` at the current step: the share of the encoder's gradient from the silent loss."""
        return silent.anneal(int(self.step), self.anneal_steps, start=self.start, end=0.0, hold=self.hold)

    def forward(self, x) -> LossOutput:
        """Both losses on a batch ``x [B, *event]``; a training-mode call advances the schedule by one step."""
        if isinstance(x, (tuple, list)):
            x = x[0]
        q = self.encoder(x)
        lam = self.silent_share()
        q_silent, q_mc = silent.split(q, lam)
        flat = x.reshape(x.shape[0], -1)
        quiet = silent.loss(flat, q_silent, self.linear_decoder)
        noisy = loss(self.log_joint(x, q_mc), q_mc, self.num_particles, self.objective, self.estimator)
        if self.training:
            with torch.no_grad():
                self.step += 1
        return silent.combine(quiet, noisy)

    def extra_repr(self) -> str:
        return f"anneal_steps={self.anneal_steps}, hold={self.hold}, start={self.start}"
