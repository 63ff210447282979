"""``vitorch.fit``: the training loop for models whose forward returns ``vt.loss``'s output.

The loop is ordinary PyTorch (zero grad, forward, backward, clip, step) with the parts
a research run needs around it: held-out evaluation and early stopping on the bound,
checkpoints from which a resumed run continues bit for bit, a guard against NaN/inf,
DDP under ``torchrun``, ``torch.compile``, a progress bar and a written history.
No backward is hidden from the model: its forward returns the loss, fit only steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .data import no_data
from .history import History
from .loop import Run, StepContext
from .options import FitOptions

__all__ = ["fit", "StepContext"]


def fit(
    model: nn.Module,
    data,
    *,
    optimizer: torch.optim.Optimizer | Callable | None = None,
    lr: float | None = None,
    scheduler=None,
    scheduler_interval: str = "step",
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
    seed: int | None = None,
    eval_data=None,
    eval_every: int | None = None,
    eval_fn: Callable | None = None,
    eval_batch_size: int | None = None,
    patience: int | None = None,
    monitor: str | None = None,
    mode: str | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    on_nonfinite: str = "raise",
    max_consecutive_skips: int = 10,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int | None = 3,
    resume: str | Path | None = None,
    resume_overrides: Sequence[str] = (),
    log_dir: str | Path | None = None,
    progress: bool | None = None,
    callbacks: Sequence[Callable[[StepContext], object]] = (),
    distributed: bool | str = "auto",
    compile: bool | Mapping = False,
    autocast_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> History:
    """Train ``model`` on ``data``; return the `History`.

    Args:
        model: an ``nn.Module`` whose ``forward(batch)`` returns a
            `vitorch.LossOutput` (``vt.loss(...)``; its ``bound [*batch]`` is
            logged and evaluated) or a scalar loss tensor.  Baselines, encoders and
            decoders are submodules and train with it.
        data: a ``DataLoader`` (used as given; rebuilt around a ``DistributedSampler``
            under DDP), a ``Dataset``, a tensor ``[N, ...]`` (batches are tensors) or a
            tuple of tensors sharing the first dimension (batches are tuples); or
            ``None`` for a model without data batches (a global posterior such as
            ``vt.model.VI``): ``steps`` calls of ``forward(None)``, which needs ``steps``.
        optimizer: an optimizer over the model's parameters, or a factory
            ``params -> Optimizer``; default ``Adam(lr=lr)`` with torch's fused kernel
            (`vitorch.training.fused_adam`).  An optimizer that offers a
            ``sampled_params(train=True)`` context (`vitorch.optim.IVON`) has each forward
            and backward run inside it, on ``mc_samples`` weight draws per step.
        lr: learning rate of the default optimizer; default the model's ``default_lr``
            attribute if it has one (``vt.model.VI`` does), else ``1e-3``.
        scheduler: an LR scheduler or a factory ``optimizer -> scheduler``;
            ``ReduceLROnPlateau`` is stepped with the monitored metric after each evaluation.
        scheduler_interval: step the scheduler every ``"step"`` or every ``"epoch"``.
        epochs: stop after this many epochs (give ``epochs``, ``steps`` or both).
        steps: stop after this many optimizer steps; a skipped non-finite step counts.
        batch_size: batch size for a Dataset or tensors, per process under DDP
            (a DataLoader keeps its own).
        shuffle: reshuffle a Dataset or tensors every epoch.
        drop_last: drop the last incomplete batch of a Dataset or tensors.
        num_workers: loader worker processes for a Dataset or tensors.
        seed: data-order seed (epoch e is shuffled with ``seed + e``, as
            ``DistributedSampler`` does); default drawn from torch's global generator.
        eval_data: held-out data (same kinds as ``data``), evaluated in eval mode
            without gradients.
        eval_every: evaluate every this many steps; default once per epoch.
        eval_fn: ``(model, loader) -> {name: float}``; default: the mean held-out
            ``bound`` per datum (``loss`` for models returning a scalar).
        eval_batch_size: default ``batch_size``.
        patience: stop after this many evaluations without improvement of ``monitor``.
        monitor: the metric early stopping and ``restore_best`` watch; default
            ``"bound"``, else ``"loss"``, else a custom ``eval_fn``'s only metric.
        mode: ``"max"`` or ``"min"``; default ``"min"`` for names containing "loss".
        min_delta: the smallest change that counts as an improvement.
        restore_best: end with the weights of the best evaluation.
        clip_grad_norm: clip the gradients' total 2-norm to this before each step (the
            pre-clipping norm is logged as ``grad_norm`` every step).
        clip_grad_value: clip every gradient entry to ``[-v, v]`` before each step.
        on_nonfinite: what a NaN/inf loss or gradient, a batch with impossible data
            (a datum whose bound is not finite: every particle impossible puts it at
            the ``-1e30`` floor, counted as ``impossible_data`` in the step record) and a
            non-finite evaluation do.  ``"raise"`` stops with `NonFiniteError`
            naming the step and every parameter with a NaN/inf gradient; ``"skip"``
            drops the step (no optimizer or scheduler step) or sets the evaluation
            aside (no early stopping, ``restore_best`` or plateau step on it) and
            counts it.  An optimizer step that leaves a parameter non-finite (or with
            an entry whose square overflows) always raises, naming that step.
        max_consecutive_skips: with ``"skip"``, raise after more than this many
            non-finite steps (or evaluations) in a row.
        checkpoint_dir: where ``step-N.pt`` files go, one at the end of the run and
            one every ``checkpoint_every`` steps.  A checkpoint holds the model,
            optimizer, scheduler, the RNG states of torch/CUDA/numpy/Python on every
            rank, the data order, the counters, the early-stopping state and the history.
        checkpoint_every: write a checkpoint every this many steps.
        keep_checkpoints: keep only the newest this many checkpoints (default 3;
            ``None`` keeps all).
        resume: a checkpoint file or directory (its newest).  The same call with
            ``resume`` continues exactly where the checkpoint left off; on CPU the
            parameters equal those of an uninterrupted run bit for bit.  A run whose
            configuration differs (batch size, data length, shuffle, drop_last, seed,
            number of processes, optimizer type or hyper-parameters, scheduler,
            clipping, autocast dtype) is refused with every difference listed.
        resume_overrides: names of settings that may differ on resume and then take
            this run's value: optimizer hyper-parameters (``"lr"``, ``"weight_decay"``,
            ...), ``"clip_grad_norm"``, ``"clip_grad_value"``, ``"autocast_dtype"``,
            ``"num_workers"``; and, only from a checkpoint at an epoch boundary,
            ``"batch_size"``, ``"data_length"``, ``"shuffle"``, ``"drop_last"``, ``"seed"``
            (see `vitorch.training.resume`).
        log_dir: write ``steps.csv``, ``evals.csv`` and ``history.json`` there (at
            each checkpoint and at the end).
        progress: a tqdm bar with the loss and bound; default only on a terminal.
        callbacks: called after every step with a `StepContext`; setting
            ``ctx.stop = True`` ends the run, an exception interrupts it.
        distributed: ``"auto"`` trains data-parallel (DDP) when a process group is
            initialized, ``True`` also initializes one from torchrun's environment,
            ``False`` never.  Only rank 0 writes checkpoints, logs and progress.
        compile: ``True`` (or a dict of ``torch.compile`` options) compiles the
            model's forward, loss included.
        autocast_dtype: ``torch.bfloat16`` or ``torch.float16`` runs each training
            forward under ``torch.autocast`` (mixed precision: the matrix products in the
            low precision, the library's densities, the loss, gradients and optimizer
            state in float32; see `vitorch.full_precision`).  Evaluation on
            ``eval_data`` stays float32.  Default ``None``: float32 throughout.
        device: where batches go; default the device of the model's parameters.

    Returns:
        `History` with one record per step and per evaluation.

    Raises:
        ValueError: for bad options (every problem listed), data of the wrong kind, a
            checkpoint that is unreadable, corrupted or from another model, or a resumed
            run whose configuration differs (every difference listed).
        NonFiniteError: on a NaN/inf loss, gradient or evaluation, or impossible data
            (see ``on_nonfinite``), and on an update that makes the parameters diverge.

    Example:
        >>> history = vt.fit(vae, x_train, epochs=10, batch_size=128, eval_data=x_test,
        ...                  patience=5, checkpoint_dir="ckpt", checkpoint_every=500)
        >>> history = vt.fit(vae, x_train, epochs=20, resume="ckpt")  # continues bit for bit

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization* (ICLR 2015): the default optimizer.
        Li et al., *PyTorch Distributed: Experiences on Accelerating Data Parallel Training* (VLDB 2020): DDP.
        Ansel et al., *PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode Transformation and
        Graph Compilation* (ASPLOS 2024): ``torch.compile``.
        Prechelt, *Early Stopping - But When?* (Neural Networks: Tricks of the Trade, 1998).
        Micikevicius et al., *Mixed Precision Training* (ICLR 2018): ``autocast_dtype``.
    """
    if lr is None:
        lr = getattr(model, "default_lr", None) or 1e-3
    if data is None:
        if steps is None or epochs is not None:
            raise ValueError("fit with data=None (no data batches) needs steps=, and takes no epochs=")
        data = no_data(steps)
    options = {k: v for k, v in locals().items() if k not in ("model", "data")}
    return Run(model, data, FitOptions(**options)).train()
