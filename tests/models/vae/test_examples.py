"""The VAE example runs end to end on the digits and writes what it promises."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import torch

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vae_example_quick(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        args = "--quick --epochs 1 --hidden 32 --latent 4 --ll-particles 20 --out".split() + [str(tmp_path)]
        metrics = _load("vae").main(args)
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["steps"] == metrics["steps"] == 12  # 1,438 digits at batch 128: one epoch
    for name in ("metrics.json", "samples.png", "reconstructions.png", "loss.png", "history.json"):
        assert (tmp_path / name).exists(), name
    assert metrics["log_likelihood"] >= metrics["elbo"] - 1e-6  # IWAE >= ELBO on the same draws, per datum
