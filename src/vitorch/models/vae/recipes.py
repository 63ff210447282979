"""The VAE zoo's recipes: each one line on `vitorch.models.vae.VAE`.

Every recipe takes the data size (or, with ``image_shape=(C, H, W)``, builds the
small convolutional model instead of the MLP) and passes any other keyword to the
builder, so ``iwae(784, K=50, latent_dim=20, estimator=vt.estimators.dreg)`` works.

References:
    VAE: Kingma & Welling (2014).  β-VAE: Higgins et al. (2017).  IWAE: Burda et al.
    (2016).  MIWAE, PIWAE, CIWAE: Rainforth et al., *Tighter Variational Bounds are Not
    Necessarily Better* (2018).  IWAE-DReG: Tucker et al. (2019).  InfoVAE: Zhao, Song &
    Ermon (2019).  VIS: Li et al., ICLR 2024.  IAF: Kingma et al. (2016).  RSVI Dirichlet:
    Naesseth et al. (2017).  Unscented Autoencoder: Janjoš et al. (ICML 2023).  Silent gradients:
    Shao, Liu & Van den Broeck (2025).  Gumbel-softmax: Jang, Gu & Poole (2017), Maddison, Mnih &
    Teh (2017).  ARD-VAE: Saha, Joshi & Whitaker (2025).  Inverse-Lipschitz decoder: Kinoshita
    et al. (ICML 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import estimators as E
from ... import objectives as O
from .ard import ARDVAE
from .discrete import CategoricalEncoder, DiscreteVAE
from .encoders import GaussianEncoder, SymmetricDirichletPrior
from .likelihoods import Bernoulli
from .lipschitz import InverseLipschitzDecoder
from .model import VAE
from .networks import MLPDecoder, Tanh
from .silent_vae import SilentVAE
from .unscented_ae import UnscentedAE

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
    "unscented_ae",
    "silent_vae",
    "gumbel_vae",
    "enumerated_vae",
    "ard_vae",
    "inverse_lipschitz_vae",
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


def unscented_ae(data_dim, beta=1.0, num_sigma_points=None, image_shape=None, **kw) -> UnscentedAE:
    """Unscented Autoencoder: sigma-point reconstruction, ``beta * W2^2`` to ``N(0, I)`` instead of the KL.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` (the unscented ELBO) and ``out.log_w [2D + 1, B]``.

    References:
        Janjoš, Rosenbaum, Dolgov & Zöllner, *Unscented Autoencoder* (ICML 2023).
    """
    build = UnscentedAE.mlp if image_shape is None else UnscentedAE.conv
    return build(image_shape or data_dim, beta=beta, num_sigma_points=num_sigma_points, **kw)


def silent_vae(data_dim, anneal_steps=2000, hold=0, image_shape=None, **kw) -> SilentVAE:
    """VAE whose encoder follows a linear decoder's zero-variance gradient, annealed to reparam over ``anneal_steps``.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``.

    References:
        Shao, Liu & Van den Broeck, *Zero-Variance Gradients for Variational Autoencoders* (2025).
    """
    build = SilentVAE.mlp if image_shape is None else SilentVAE.conv
    flat = data_dim if image_shape is None else _prod(image_shape)
    return build(image_shape or data_dim, observed_dim=flat, anneal_steps=anneal_steps, hold=hold, **kw)


def _mlp_only(name: str, image_shape) -> None:
    if image_shape is not None:
        raise ValueError(f"{name}: the MLP model only (no image_shape); got image_shape={image_shape!r}")


def _discrete(data_dim, num_latents, num_classes, hidden=(200, 200), likelihood=None, activation=Tanh, **kw):
    _mlp_only("the categorical recipes", kw.pop("image_shape", None))
    likelihood = likelihood if likelihood is not None else Bernoulli()
    encoder = CategoricalEncoder(data_dim, num_latents, num_classes, hidden, activation)
    decoder = MLPDecoder(
        num_latents * num_classes, (data_dim,), tuple(reversed(hidden)), likelihood.params_per_entry, activation
    )
    return DiscreteVAE(encoder, decoder, likelihood, **kw)


def gumbel_vae(
    data_dim,
    num_latents=30,
    num_classes=10,
    temperature=1.0,
    min_temperature=0.5,
    anneal_rate=3e-3,
    straight_through=False,
    **kw,
) -> DiscreteVAE:
    """Categorical-latent VAE trained with Gumbel-softmax (Concrete) samples at an annealed temperature.

    ``num_latents`` categoricals of ``num_classes`` classes (Jang et al. use 30 x 10 on MNIST);
    ``straight_through=True`` decodes hard one-hot codes with the relaxed gradient.

    Shapes: the model maps ``x [B, data_dim]`` to ``out.loss`` (scalar), ``out.bound [B]`` and
    ``out.log_w [K, B]``.

    References:
        Jang, Gu & Poole, *Categorical Reparameterization with Gumbel-Softmax* (ICLR 2017);
        Maddison, Mnih & Teh, *The Concrete Distribution* (ICLR 2017).
    """
    return _discrete(
        data_dim,
        num_latents,
        num_classes,
        method="gumbel",
        temperature=temperature,
        min_temperature=min_temperature,
        anneal_rate=anneal_rate,
        straight_through=straight_through,
        **kw,
    )


def enumerated_vae(data_dim, num_latents=2, num_classes=10, **kw) -> DiscreteVAE:
    """Categorical-latent VAE whose ELBO sums over all ``num_classes ** num_latents`` codes: exact, zero variance.

    Shapes: the model maps ``x [B, data_dim]`` to ``out.loss`` (scalar), ``out.bound [B]`` (the
    exact ELBO) and ``out.log_w [C^L, B]``.

    References:
        Mnih & Gregor (ICML 2014); Kingma, Rezende, Mohamed & Welling (NeurIPS 2014).
    """
    return _discrete(data_dim, num_latents, num_classes, method="enumerate", **kw)


def ard_vae(data_dim, a0=1e-3, b0=1e-3, image_shape=None, **kw) -> ARDVAE:
    """ARD-VAE: a Normal-Gamma hierarchical prior on the latent variances, inferred from the encoded batch.

    Shapes: the model maps ``x [B, data_dim]`` (or ``[B, C, H, W]``) to ``out.loss`` (scalar),
    ``out.bound [B]`` and ``out.log_w [K, B]``; ``model.relevant_dims()`` flags the relevant axes.

    References:
        Saha, Joshi & Whitaker, *ARD-VAE* (WACV 2025).
    """
    build = ARDVAE.mlp if image_shape is None else ARDVAE.conv
    return build(image_shape or data_dim, a0=a0, b0=b0, **kw)


def inverse_lipschitz_vae(
    data_dim, lipschitz=1.0, latent_dim=50, hidden=(200, 200), likelihood=None, activation=Tanh, **kw
) -> VAE:
    """VAE with an ``lipschitz``-inverse-Lipschitz decoder (strongly monotone gradient maps and an isometric embedding).

    Shapes: the model maps ``x [B, data_dim]`` to ``out.loss`` (scalar), ``out.bound [B]`` and
    ``out.log_w [K, B]``.

    References:
        Kinoshita, Oono, Fukumizu, Yoshida & Maeda, *Controlling Posterior Collapse by an Inverse
        Lipschitz Constraint on the Decoder Network* (ICML 2023).
    """
    _mlp_only("inverse_lipschitz_vae", kw.pop("image_shape", None))
    likelihood = likelihood if likelihood is not None else Bernoulli()
    if likelihood.params_per_entry != 1:
        raise ValueError(f"inverse_lipschitz_vae needs one parameter per entry; got {likelihood.params_per_entry}")
    width = tuple(hidden) if len(hidden) == 2 else (hidden[0], hidden[-1]) if hidden else (200, 200)
    encoder = GaussianEncoder(None, data_dim, latent_dim, hidden, activation)
    decoder = InverseLipschitzDecoder(latent_dim, (data_dim,), lipschitz, width)
    return VAE(encoder, decoder, likelihood, latent_dim, **kw)


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


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
    "unscented_ae": unscented_ae,
    "silent_vae": silent_vae,
    "gumbel_vae": gumbel_vae,
    "enumerated_vae": enumerated_vae,
    "ard_vae": ard_vae,
    "inverse_lipschitz_vae": inverse_lipschitz_vae,
}
