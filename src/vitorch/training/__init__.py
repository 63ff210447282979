"""Training: `fit`, its `History`, checkpoints and the non-finite guard.

``fit`` runs the optimization loop for any ``nn.Module`` whose forward returns
``vt.loss``'s output (or a scalar loss), with evaluation and early stopping on the
held-out bound, bit-exact resumable checkpoints, DDP and ``torch.compile``.
"""

from .checkpoint import load_checkpoint
from .compile import CompiledStep, compile_step, fused_adam
from .fit import fit
from .guard import NonFiniteError
from .history import History
from .loop import StepContext

__all__ = [
    "fit",
    "History",
    "StepContext",
    "NonFiniteError",
    "load_checkpoint",
    "compile_step",
    "CompiledStep",
    "fused_adam",
]
