"""The part of `vitorch.training.loop.Run` that writes a checkpoint and restores one.

What is saved is everything the next step depends on: the model, optimizer and
scheduler states, every rank's RNG states and data-order state, the counters, the
early-stopping state and the history, plus the run's configuration, which a resumed
run must match (`vitorch.training.resume`).
"""

from __future__ import annotations

import warnings

from . import distributed as ddp
from .checkpoint import copy_state, save_checkpoint
from .history import History
from .resume import apply_overrides, check_config, optimizer_state_fits
from .rng import capture_rng

__all__ = ["RunState", "loader_length"]


def loader_length(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


class RunState:
    """Mixed into ``Run``: reads and writes the attributes ``Run.__init__`` sets."""

    def _restore(self, payload: dict) -> dict:
        loop = payload["loop"]
        where = f"step {int(loop['step'])} of {self.opt.resume}"
        epoch_batches = int(loop.get("epoch_batches", -1))
        batch = int(loop["batch"])
        at_boundary = batch == 0 or batch == epoch_batches
        stored = payload.get("config")
        hparams: list[str] = []
        if stored is None:  # written before checkpoints stored the run's configuration
            warnings.warn(
                f"resume: checkpoint {where} does not record the run's configuration (an older vitorch.fit "
                "format), so a changed batch size, data set or optimizer cannot be detected",
                stacklevel=4,
            )
            if int(loop["world"]) != self.topo.world:
                raise ValueError(
                    f"resume: the checkpoint was written by {loop['world']} process(es), this run has "
                    f"{self.topo.world}; resume with the same number of processes"
                )
            if bool(payload["scheduler"]) != (self.scheduler is not None):
                raise ValueError("resume: pass a scheduler exactly when the checkpointed run had one")
            mismatch = optimizer_state_fits(payload["optimizer"], self.optimizer)
            if mismatch is not None:
                raise ValueError(f"resume: the optimizer state in checkpoint {where} does not fit: {mismatch}")
            # Nothing to compare with, but named hyper-parameters still take this run's values.
            groups = payload["optimizer"]["param_groups"]
            stored = {"hparams": [{**g, "lr": g.get("initial_lr", g.get("lr"))} for g in groups]}
            names = {k for g in self.config["hparams"] for k in g}
            hparams = [n for n in self.opt.resume_overrides if n in names]
        else:
            hparams, data = check_config(stored, self.config, self.opt.resume_overrides, at_boundary, where)
            # The checkpointed epoch is complete but the data changed: end it without replaying it.
            self.finish_epoch = bool(data) and batch > 0
        self.model.load_state_dict(payload["model"])
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise ValueError(
                f"resume: the optimizer state in checkpoint {where} does not fit this run's "
                f"{type(self.optimizer).__name__} ({type(err).__name__}: {err}); resume with the checkpoint's "
                "optimizer and parameter groups"
            ) from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        if hparams:
            apply_overrides(self.optimizer, self.scheduler, stored, self.config, hparams)
        self.step, self.epoch, self.batch = int(loop["step"]), int(loop["epoch"]), batch
        self.bad_evals, self.consecutive_skips = int(loop["bad_evals"]), int(loop["consecutive_skips"])
        self.eval_skips = int(loop.get("eval_skips", 0))
        self.history = History.from_state_dict(payload["history"])
        self.history.stop_reason = None
        best = payload["best_model"]
        self.best_state = copy_state(best, self.device) if best else None
        data = payload["data"][self.topo.rank]
        self.epoch_start = data if data["rng"] else None
        return payload["rng"][self.topo.rank]

    def _checkpoint(self) -> None:
        opt = self.opt
        epoch_start = self.epoch_start if self.batch > 0 and self.epoch_start is not None else {"rng": {}, "gens": []}
        rngs = ddp.gather_objects(capture_rng(), self.topo)
        datas = ddp.gather_objects(epoch_start, self.topo)
        self.saved_step = self.step  # on every rank: the final-checkpoint decision must agree
        if not self.topo.is_main:
            return
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": rngs,
            "data": datas,
            "loop": {
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch,
                "seed": self.seed,
                "bad_evals": self.bad_evals,
                "consecutive_skips": self.consecutive_skips,
                "eval_skips": self.eval_skips,
                "world": self.topo.world,
                "epoch_batches": loader_length(self.loader) or -1,
            },
            "config": self.config,
            "history": self.history.state_dict(),
            "best_model": self.best_state or {},
        }
        save_checkpoint(payload, opt.checkpoint_dir, self.step, keep=opt.keep_checkpoints)
        if opt.log_dir is not None:
            self.history.write(opt.log_dir)
