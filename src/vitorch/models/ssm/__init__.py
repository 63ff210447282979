"""State-space models: exact Kalman inference as the oracle, variational inference for the rest.

Trainable modules follow the zoo protocol (``forward(y) -> LossOutput``, ``predict``;
one datum is one sequence, a batch is ``y [B, T, obs_dim]``):

* `KalmanSSM` — a linear-Gaussian model with learnable parameters whose bound is
  its exact Kalman log-likelihood (maximum likelihood through `vitorch.fit`).
* `SSMVI` — a model and its guide trained by a variational bound.

The parts:

* `LinearGaussianSSM` — Kalman filter (sequential, or parallel by associative
  scan), RTS smoother, FFBS sampling, proper or diffuse initial states, and the
  exact posterior as a variational family (`LinearGaussianSSM.posterior`).
* `GaussianMarkovChain` — a structured Gaussian family over whole paths;
  `MarkovGaussianGuide` gives it free parameters for one series.
* `StateSpaceModel` with Gaussian, Poisson and Bernoulli emission helpers:
  nonlinear / non-Gaussian models as plain torch distributions.
* `StructuredInferenceNetwork` — the amortized deep-Markov-model posterior
  (Krishnan et al., 2017).
* `EulerMaruyamaSDE` and `SDEPosterior` — discretized SDEs with the
  autoregressive variational bridge of Ryder et al. (2018) and a posterior over
  the SDE's parameters.
* `MarkovGP` and `MarkovVariationalGP` — Gaussian processes on time in ``O(T)``:
  the kernel as a linear SDE (`state_space`), exact regression by Kalman smoothing,
  and CVI sites with Kalman smoothing for non-Gaussian likelihoods.
* `SVAE` — structured VAEs (Johnson et al., 2016): encoder potentials combined with an
  `LDSPrior` by the (parallel) Kalman smoother, for a `DeepLDS` generative model.
"""

from .chain import GaussianMarkovChain, affine_recurrence
from .exact import KalmanSSM
from .guides import DMMCombiner, MarkovGaussianGuide, StructuredInferenceNetwork
from .kalman import FilterResult, kalman_filter, rts_smoother
from .linear_gaussian import LinearGaussianSSM
from .markov_cvi import MarkovVariationalGP
from .markov_gp import MarkovGP
from .model import BernoulliEmission, GaussianEmission, GaussianTransition, PoissonEmission, StateSpaceModel
from .parallel import parallel_kalman_filter, parallel_rts_smoother
from .path import AutoregressiveGaussianPath
from .sde import BridgeStep, EulerMaruyamaSDE, SDEJointPosterior, SDEPosterior
from .sde_kernels import StateSpaceForm, discretize, state_space
from .svae import SVAE, DeepLDS, GaussianPotentialEncoder, LDSPrior, SVAEPosterior
from .timevarying import tv_kalman_filter, tv_posterior_chain, tv_smoother
from .vi import SSMVI

__all__ = [
    "SSMVI",
    "KalmanSSM",
    "LinearGaussianSSM",
    "GaussianMarkovChain",
    "AutoregressiveGaussianPath",
    "MarkovGaussianGuide",
    "StructuredInferenceNetwork",
    "DMMCombiner",
    "StateSpaceModel",
    "GaussianTransition",
    "GaussianEmission",
    "PoissonEmission",
    "BernoulliEmission",
    "EulerMaruyamaSDE",
    "SDEPosterior",
    "SDEJointPosterior",
    "BridgeStep",
    "FilterResult",
    "affine_recurrence",
    "kalman_filter",
    "parallel_kalman_filter",
    "parallel_rts_smoother",
    "rts_smoother",
    "MarkovGP",
    "MarkovVariationalGP",
    "StateSpaceForm",
    "state_space",
    "discretize",
    "SVAE",
    "SVAEPosterior",
    "DeepLDS",
    "LDSPrior",
    "GaussianPotentialEncoder",
    "tv_kalman_filter",
    "tv_smoother",
    "tv_posterior_chain",
]
