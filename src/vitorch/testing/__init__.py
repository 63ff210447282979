"""Test bases shipped with vitorch, for its own families and models and for yours.

* `check_family`: the battery every variational family passes (shapes,
  ``rsample_and_log_prob`` against ``log_prob``, the stopped-parameter log-density,
  gradients to every parameter, ``expand``, save/load, float64).
* `ModelTestCase`: a pytest base class; a model's test subclasses it, names
  ``make_model`` and ``make_data``, and inherits the model-protocol tests (a
  `vitorch.LossOutput` from ``forward``, a gradient for every parameter, the
  bound against an exact log evidence, `vitorch.fit`, bit-exact checkpoint
  resume, ``restore_best``, ``state_dict`` round trip, ``predict``).

This module imports pytest (a development dependency of vitorch).
"""

from .family import FamilyCheckError, check_family
from .model import ModelTestCase

__all__ = ["check_family", "FamilyCheckError", "ModelTestCase"]
