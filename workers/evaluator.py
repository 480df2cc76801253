"""Subnet evaluation with inherited weights: extract, recalibrate batch norm, measure accuracy.

The supernet's shared batch-norm statistics mix every subnet trained through it, so each
subnet gets its own statistics from a pass over training data before it is scored (as in
Once-for-All). Recalibration runs on the extracted copy; the supernet is never changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from search_spaces import Supernet, get_space
from workers.datasets import Splits, load_dataset

CALIBRATION_SAMPLES = 2000
BATCH = 500


def recalibrate_batchnorm(
    net: nn.Module, x: np.ndarray, seed: int = 0, samples: int = CALIBRATION_SAMPLES
) -> nn.Module:
    """Replace every batch norm's running statistics with exact averages over ``samples`` rows
    of ``x``."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(samples, len(x)), replace=False)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all calibration batches
    net.train()
    device = _device(net)
    with torch.no_grad():
        for start in range(0, len(rows), BATCH):
            net(torch.from_numpy(x[rows[start : start + BATCH]]).to(device))
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    return net.eval()


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = BATCH) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) on ``x``/``y``, ``batch`` rows at a time (larger
    on a GPU that many processes share)."""
    correct, device = 0, _device(net)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = net(torch.from_numpy(x[start : start + batch]).to(device))
            correct += int((logits.argmax(dim=1).cpu().numpy() == y[start : start + batch]).sum())
    return correct / len(x)


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def evaluate_config(supernet: Supernet, config: Mapping[str, int], splits: Splits) -> dict:
    """Validation and test accuracy, MACs and params of one subnet, plus its calibrated weights.

    ``weights`` is the extracted subnet's state dict in safetensors format, so that an export
    later reproduces exactly the network that was scored.
    """
    net = recalibrate_batchnorm(supernet.extract(config), splits.x_train)
    return {
        "accuracy": accuracy(net, splits.x_val, splits.y_val),
        "test_accuracy": accuracy(net, splits.x_test, splits.y_test),
        "macs": supernet.macs(config),
        "params": sum(p.numel() for p in net.parameters()),
        "weights": safetensors_bytes({k: v.contiguous() for k, v in net.state_dict().items()}),
    }


def load_supernet(space: Mapping[str, Any], checkpoint: str) -> Supernet:
    """The trained supernet of ``space`` (``{"name": ..., "kwargs": ...}``) from a checkpoint."""
    supernet = get_space(space["name"], **space["kwargs"]).build_supernet()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    supernet.load_state_dict(state["model"])
    return supernet.eval()


def evaluate_configs(
    space: Mapping[str, Any],
    dataset: Mapping[str, Any],
    checkpoint: str,
    configs: list[Mapping[str, int]],
) -> list[dict]:
    """``evaluate_config`` for each config, loading supernet and data once (one Ray task)."""
    torch.set_num_threads(1)
    supernet = load_supernet(space, checkpoint)
    splits = load_dataset(**dataset)
    return [evaluate_config(supernet, config, splits) for config in configs]
