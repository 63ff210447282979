"""The VAE zoo: one model, any encoder family, decoder likelihood, objective and estimator.

Example:
    >>> from vitorch.models import vae
    >>> model = vae.iwae(784, K=5)                      # IWAE, 784-200-200-50 MLP, Bernoulli decoder
    >>> out = model(x)                                  # LossOutput: loss = -mean(out.bound)
    >>> out.loss.backward()
    >>> metrics = vae.evaluate(model, x_test, num_particles=5000)
"""

from .ard import ARDVAE, ARDPrior
from .discrete import CategoricalEncoder, DiscreteVAE, OneHotLatents
from .encoders import DirichletEncoder, GaussianEncoder, IAFEncoder, SymmetricDirichletPrior
from .evaluation import evaluate, iwae_log_likelihood, latent_means
from .likelihoods import Bernoulli, Categorical, Gaussian, Likelihood, Poisson
from .lipschitz import InverseLipschitzDecoder, MonotoneGradientMap
from .model import VAE
from .networks import (
    ConvDecoder,
    ConvFeatures,
    MLPDecoder,
    Tanh,
    mlp,
)
from .plots import image_grid, save_image_grid
from .recipes import (
    RECIPES,
    ard_vae,
    beta_vae,
    ciwae,
    dirichlet_vae,
    enumerated_vae,
    gumbel_vae,
    iaf_vae,
    info_vae,
    inverse_lipschitz_vae,
    iwae,
    iwae_dreg,
    miwae,
    piwae,
    silent_vae,
    unscented_ae,
    vae,
    vis,
)
from .silent_vae import SilentVAE
from .unscented_ae import UnscentedAE

__all__ = [
    "VAE",
    "Likelihood",
    "Bernoulli",
    "Gaussian",
    "Categorical",
    "Poisson",
    "mlp",
    "Tanh",
    "MLPDecoder",
    "ConvFeatures",
    "ConvDecoder",
    "GaussianEncoder",
    "IAFEncoder",
    "DirichletEncoder",
    "SymmetricDirichletPrior",
    "evaluate",
    "iwae_log_likelihood",
    "latent_means",
    "image_grid",
    "save_image_grid",
    "RECIPES",
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
    "UnscentedAE",
    "SilentVAE",
    "DiscreteVAE",
    "OneHotLatents",
    "CategoricalEncoder",
    "ARDVAE",
    "ARDPrior",
    "InverseLipschitzDecoder",
    "MonotoneGradientMap",
    "unscented_ae",
    "silent_vae",
    "gumbel_vae",
    "enumerated_vae",
    "ard_vae",
    "inverse_lipschitz_vae",
]
