"""Latency measurement of extracted subnets on the device of a hardware target.

Protocol: a fixed number of threads, a fixed batch of zeros shaped like the dataset's raw
inputs, ``warmup`` untimed runs, then ``repeats`` timed runs; the result is the median with the
interquartile range as spread. Weights do not change latency, so a freshly built supernet
stands in for the trained one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import get_space


def time_module(
    net: nn.Module, x: torch.Tensor, warmup: int, repeats: int
) -> dict[str, float | int]:
    """Median and interquartile range of ``net(x)`` wall time, in milliseconds (CPU)."""
    with torch.inference_mode():
        for _ in range(warmup):
            net(x)
        samples = np.empty(repeats)
        for i in range(repeats):
            start = time.perf_counter_ns()
            net(x)
            samples[i] = (time.perf_counter_ns() - start) / 1e6
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_ms": float(median), "spread_ms": float(q3 - q1), "repeats": repeats}


def measure_latency(
    space: Mapping[str, Any],
    configs: Sequence[Mapping[str, int]],
    target: Mapping[str, Any],
    input_shape: Sequence[int],
) -> list[dict[str, float | int]]:
    """Latency of each config on ``target`` (plain settings of one hardware target).

    ``input_shape`` is one raw sample's shape; the target's batch size is put in front of it.
    """
    if target["device"] != "cpu":
        raise ValueError(f"device '{target['device']}' is not supported yet; supported: cpu")
    torch.set_num_threads(target["threads"])
    supernet = get_space(space["name"], **space["kwargs"]).build_supernet().eval()
    x = torch.zeros((target["batch_size"], *input_shape))
    return [
        time_module(supernet.extract(config).eval(), x, target["warmup"], target["repeats"])
        for config in configs
    ]
