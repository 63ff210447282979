"""Variational Bayesian last layers (VBLL) and the exact Bayesian linear regression oracle.

* `VBLLModel` — a feature network and a head as one model for `vitorch.fit`
  (``forward((x, y))`` returns a `vitorch.LossOutput`, ``predict(x)`` the predictive);
* `BayesianLinearRegression` — exact posterior, predictive and evidence, with
  type-II tuning of the prior and noise scales;
* `VBLLRegression` — deterministic VBLL regression objective, any of the
  weight-posterior parameterizations in `.covariance`, fixed or learned noise;
* `VBLLDenseNoiseRegression` — the same with a dense noise covariance across outputs;
* `VBLLStudentTRegression` — normal-gamma noise precision, Student-t predictive;
* `VBLLHeteroscedasticRegression` — a second Bayesian layer for the log-variance;
* `VBLLClassification` — discriminative classification with the Jensen bound;
* `VBLLGenerativeClassification` — class-conditional Gaussian features;
* `.metrics` — NLL, RMSE, accuracy, expected calibration error, AUROC and
  reliability diagrams.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from . import metrics
from .blr import BayesianLinearRegression
from .classification import VBLLClassification
from .covariance import Dense, DensePrecision, Diagonal, LowRank, WeightPosterior
from .dense_noise import VBLLDenseNoiseRegression
from .generative import VBLLGenerativeClassification
from .heteroscedastic import VBLLHeteroscedasticRegression
from .model import VBLLModel
from .output import LastLayerOutput
from .regression import VBLLRegression
from .student_t import VBLLStudentTRegression

__all__ = [
    "VBLLModel",
    "BayesianLinearRegression",
    "VBLLRegression",
    "VBLLDenseNoiseRegression",
    "VBLLStudentTRegression",
    "VBLLHeteroscedasticRegression",
    "VBLLClassification",
    "VBLLGenerativeClassification",
    "metrics",
    "LastLayerOutput",
    "WeightPosterior",
    "Dense",
    "Diagonal",
    "LowRank",
    "DensePrecision",
]
