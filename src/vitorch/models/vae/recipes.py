"""The VAE zoo's recipes: each one line on `vitorch.models.vae.VAE`.

Every recipe takes the data size (or, with ``image_shape=(C, H, W)``, builds the
small convolutional model instead of the MLP) and passes any other keyword to the
builder, so ``iwae(784, K=50, latent_dim=20, estimator=vt.estimators.dreg)`` works.

References:
    VAE: Kingma & Welling (2014).  β-VAE: Higgins et al. (2017).  IWAE: Burda et al.
    (2016).  MIWAE, PIWAE, CIWAE: Rainforth et al., *Tighter Variational Bounds are Not
    Necessarily Better* (2018).  IWAE-DReG: Tucker et al. (2019).  InfoVAE: Zhao, Song &
    Ermon (2019).  VIS: Li et al., ICLR 2024.  IAF: Kingma et al. (2016).  RSVI Dirichlet:
    Naesseth et al. (2017).
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import estimators as E
from ... import objectives as O
from .model import VAE
from .networks import SymmetricDirichletPrior

__all__ = [
    "vae",
    "beta_vae",
    "iwae",
    "miwae",
    "piwae",
    "ciwae",
    "iwae_dreg",
    "info_vae",
    "vis",
    "iaf_vae",
    "dirichlet_vae",
    "RECIPES",
]


def _build(data_dim: int, image_shape: Sequence[int] | None, **kw) -> VAE:
    return VAE.mlp(data_dim, **kw) if image_shape is None else VAE.conv(image_shape, **kw)


def vae(data_dim, image_shape=None, **kw) -> VAE:
    """VAE: the single-sample ELBO with the reparameterization gradient.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014).
    """
    return _build(data_dim, image_shape, **kw)


def beta_vae(data_dim, beta=4.0, image_shape=None, **kw) -> VAE:
    """β-VAE: ``E log p(x|z) - beta KL(q || p)`` with the closed-form Gaussian KL.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Higgins et al., *beta-VAE: Learning Basic Visual Concepts with a Constrained
        Variational Framework* (ICLR 2017).
    """
    return _build(data_dim, image_shape, kl_weight=beta, analytic_kl=True, **kw)


def iwae(data_dim, K=5, image_shape=None, **kw) -> VAE:
    """IWAE: the ``K``-particle importance-weighted bound.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (2016).
    """
    return _build(data_dim, image_shape, objective=O.iwae, num_particles=K, **kw)


def miwae(data_dim, M=8, K=8, image_shape=None, **kw) -> VAE:
    """MIWAE(M, K): the mean of ``M`` IWAE_K bounds over ``M * K`` particles.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Rainforth et al., *Tighter Variational Bounds are Not Necessarily Better* (2018).
    """
    return _build(data_dim, image_shape, objective=O.miwae(M), num_particles=M * K, **kw)


def piwae(data_dim, M=8, K=8, image_shape=None, **kw) -> VAE:
    """PIWAE(M, K): the decoder ascends IWAE_{MK}, the encoder MIWAE(M, K), on the same draws.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Rainforth et al., *Tighter Variational Bounds are Not Necessarily Better* (2018).
    """
    return _build(data_dim, image_shape, objective=O.piwae(M), num_particles=M * K, **kw)


def ciwae(data_dim, beta=0.5, K=64, image_shape=None, **kw) -> VAE:
    """CIWAE(beta): ``beta ELBO + (1 - beta) IWAE_K`` on the same ``K`` particles.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Rainforth et al., *Tighter Variational Bounds are Not Necessarily Better* (2018).
    """
    return _build(data_dim, image_shape, objective=O.ciwae(beta), num_particles=K, **kw)


def iwae_dreg(data_dim, K=5, image_shape=None, **kw) -> VAE:
    """IWAE with doubly reparameterized encoder gradients.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators for
        Monte Carlo Objectives* (2019).
    """
    return _build(data_dim, image_shape, objective=O.iwae, estimator=E.dreg, num_particles=K, **kw)


def info_vae(data_dim, alpha=0.0, lam=1000.0, image_shape=None, **kw) -> VAE:
    """InfoVAE: ``E log p(x|z) - (1 - alpha) KL - (alpha + lam - 1) MMD(q(z), p(z))`` (Zhao et al.'s α, λ).

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Zhao, Song & Ermon, *InfoVAE: Balancing Learning and Inference in Variational
        Autoencoders* (AAAI 2019).
    """
    return _build(data_dim, image_shape, kl_weight=1.0 - alpha, mmd_weight=alpha + lam - 1.0, **kw)


def vis(data_dim, K=5, image_shape=None, estimator=None, **kw) -> VAE:
    """VIS: the decoder ascends IWAE_K, the encoder descends the forward-χ² objective ``log mean w^2``.

    The encoder takes the paper's self-normalized score-function gradient (``score()``)
    by default: with ``reparam`` the forward-χ² gradient through ``z`` rewards ever wider
    encoders on binarized digits, and the KL grows to hundreds of nats in 150 steps.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Li et al., *Forward χ² Divergence Based Variational Importance Sampling* (ICLR 2024).
    """
    estimator = E.score() if estimator is None else estimator
    return _build(data_dim, image_shape, objective=O.vis(), estimator=estimator, num_particles=K, **kw)


def iaf_vae(data_dim, num_flows=2, image_shape=None, **kw) -> VAE:
    """VAE whose posterior is a diagonal Gaussian followed by ``num_flows`` IAF steps.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow* (2016).
    """
    return _build(data_dim, image_shape, posterior="iaf", num_flows=num_flows, **kw)


def dirichlet_vae(data_dim, latent_dim=10, prior_concentration=1.0, image_shape=None, **kw) -> VAE:
    """VAE with an RSVI Dirichlet posterior on the ``latent_dim``-simplex and a symmetric Dirichlet prior.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Naesseth et al., *Reparameterization Gradients through Acceptance-Rejection
        Sampling Algorithms* (2017).
    """
    prior = SymmetricDirichletPrior(latent_dim, prior_concentration)
    return _build(data_dim, image_shape, latent_dim=latent_dim, posterior="dirichlet", prior=prior, **kw)


RECIPES = {
    "vae": vae,
    "beta_vae": beta_vae,
    "iwae": iwae,
    "miwae": miwae,
    "piwae": piwae,
    "ciwae": ciwae,
    "iwae_dreg": iwae_dreg,
    "info_vae": info_vae,
    "vis": vis,
    "iaf_vae": iaf_vae,
    "dirichlet_vae": dirichlet_vae,
}
