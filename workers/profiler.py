"""Latency measurement of subnets and of single layers on the device of a hardware target.

Protocol: a fixed number of threads, a fixed batch of zeros shaped like the target's inputs,
``warmup`` untimed runs, then ``repeats`` timed runs, one at a time; the result is the median
with the interquartile range as spread. The modules of one call are measured in interleaved
rounds (each round times every module for a share of its repeats, after a short re-warm-up), so
that a change in the machine's load while they are measured falls on all of them alike instead
of on whichever module was being timed: on a busy machine this alone took the share of
subnets whose two measurements agree within 10% from about a half to three quarters (torch)
and from a fifth to nine tenths (onnxruntime). Weights do not change latency, so a freshly
built supernet stands in for the trained one.

Runtimes: ``torch`` (eager, under ``inference_mode``), ``cudagraph`` (CUDA only: the forward pass
captured once as a CUDA graph and replayed, which is how a small network is served where the
CPU's kernel launches would otherwise dominate and vary) and ``onnxruntime`` (the module exported
to ONNX in memory, run by an ``InferenceSession`` with ``intra_op_num_threads = threads``). Timing:
on the CPU, and for onnxruntime on either device, a call returns when its outputs are on the
host, so the wall clock around it is the latency. Torch on CUDA (eager or a graph replay)
launches kernels and returns
before they ran: each run is timed with a pair of CUDA events recorded around it on an idle
device (``torch.cuda.synchronize()`` before each start), read after a final synchronisation.

Every result carries the Ray node it was measured on (``""`` outside Ray), so a caller can check
where a target's measurements really ran.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import get_space

DEVICES = ("cpu", "cuda")
RUNTIMES = ("torch", "onnxruntime", "cudagraph")
#: Runtimes that run on the device the target names only.
DEVICE_ONLY = {"cudagraph": "cuda"}
#: Rounds the repeats are split into; untimed runs before each round after the first; modules
#: held at once (each an extracted network or an onnxruntime session).
ROUNDS = 5
REWARM = 2
GROUP = 512

#: A latency measurement: ``median_ms``, ``spread_ms`` (IQR), ``repeats`` and ``node_id``.
Latency = dict[str, Any]


def current_node() -> str:
    """The id of the Ray node this process runs on (a worker's, or a connected driver's), or
    ``""`` when the process is not connected to Ray."""
    try:
        import ray
    except ImportError:
        return ""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def summarise(samples_ms: np.ndarray) -> Latency:
    """Median and interquartile range of timed runs."""
    q1, median, q3 = np.percentile(samples_ms, [25, 50, 75])
    return {"median_ms": float(median), "spread_ms": float(q3 - q1), "repeats": len(samples_ms)}


def wall_samples(run: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
    """Wall time of each of ``repeats`` calls of a synchronous ``run``, in milliseconds."""
    for _ in range(warmup):
        run()
    samples = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        run()
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    return samples


def cuda_event_samples(run: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
    """Device time of each of ``repeats`` runs of asynchronous CUDA work, in milliseconds.

    Each run starts on an idle device (synchronised first) between two recorded events, so a
    sample is one run's latency, launch gaps included, not a share of a pipelined stream.
    """
    for _ in range(warmup):
        run()
    pairs = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    for start, end in pairs:
        torch.cuda.synchronize()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    return np.array([start.elapsed_time(end) for start, end in pairs])


def onnx_bytes(net: nn.Module, x: torch.Tensor) -> bytes:
    """``net`` exported to ONNX in memory (input ``x``).

    The TorchScript-based exporter is used: it takes a tenth of a second per graph where the
    ``torch.export``-based one takes seconds, and a layer table exports hundreds of graphs.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # that exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, input_names=["x"], dynamo=False)
    return buffer.getvalue()


def onnx_session(net: nn.Module, x: torch.Tensor, device: str, threads: int) -> Any:
    """An onnxruntime session running ``net`` on ``device`` with ``threads`` intra-op threads."""
    import onnxruntime

    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
    available = onnxruntime.get_available_providers()
    if provider not in available:
        raise RuntimeError(
            f"onnxruntime here has no {provider} for device '{device}'; "
            f"available: {', '.join(available)}"
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(onnx_bytes(net, x), options, providers=[provider])


def runner(net: nn.Module, x: torch.Tensor, target: Mapping[str, Any]) -> Callable[[], object]:
    """One forward pass of ``net`` on ``x`` under the target's runtime and device."""
    net = net.eval()
    if target["runtime"] == "onnxruntime":
        session = onnx_session(net, x, target["device"], target["threads"])
        feed = {"x": x.numpy()}
        return lambda: session.run(None, feed)
    net, x = net.to(target["device"]), x.to(target["device"])
    if target["runtime"] == "cudagraph":
        return cuda_graph(net, x)
    return lambda: net(x)


def cuda_graph(net: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """``net(x)`` captured as a CUDA graph (after warm-up on a side stream, as capture needs);
    calling the result replays it and returns the graph's output tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):
            net(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = net(x)

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


def time_modules(
    builders: Sequence[Callable[[], tuple[nn.Module, torch.Tensor]]], target: Mapping[str, Any]
) -> list[Latency]:
    """Latency of each ``(module, input)`` that ``builders`` make, under ``target``'s device,
    runtime, warm-up and repeats, in interleaved rounds over groups of ``GROUP`` modules."""
    on_gpu = target["device"] == "cuda" and target["runtime"] != "onnxruntime"
    timer = cuda_event_samples if on_gpu else wall_samples
    warmup, repeats = target["warmup"], target["repeats"]
    counts = [len(share) for share in np.array_split(np.arange(repeats), min(ROUNDS, repeats))]
    node, results = current_node(), []
    for start in range(0, len(builders), GROUP):
        runs = [runner(*build(), target) for build in builders[start : start + GROUP]]
        samples: list[list[np.ndarray]] = [[] for _ in runs]
        with torch.inference_mode():
            for round_, count in enumerate(counts):
                for run, taken in zip(runs, samples, strict=True):
                    taken.append(timer(run, warmup if round_ == 0 else REWARM, count))
        results += [{**summarise(np.concatenate(s)), "node_id": node} for s in samples]
    return results


def prepare(target: Mapping[str, Any]) -> None:
    """Set the target's thread count; fail with one line if this worker has no GPU for it."""
    if target["device"] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"target '{target['name']}' needs CUDA; torch here sees no GPU")
    torch.set_num_threads(target["threads"])


def measure_latency(
    space: Mapping[str, Any],
    configs: Sequence[Mapping[str, int]],
    target: Mapping[str, Any],
    input_shape: Sequence[int],
) -> list[Latency]:
    """Latency of each config's extracted subnet on ``target`` (plain settings of one target).

    ``input_shape`` is one raw sample's shape; the target's batch size is put in front of it.
    """
    prepare(target)
    supernet = get_space(space["name"], **space["kwargs"]).build_supernet().eval()
    x = torch.zeros((target["batch_size"], *input_shape))

    def build(config: Mapping[str, int]) -> tuple[nn.Module, torch.Tensor]:
        return supernet.extract(config), x

    return time_modules([partial(build, c) for c in configs], target)


def measure_layers(
    space: Mapping[str, Any], signatures: Sequence[str], target: Mapping[str, Any]
) -> dict[str, Latency]:
    """Latency of each single layer, named by the search space's layer signature, on
    ``target``: the entries of a latency lookup table."""
    prepare(target)
    search_space = get_space(space["name"], **space["kwargs"])

    def build(signature: str) -> tuple[nn.Module, torch.Tensor]:
        layer, sample_shape = search_space.build_layer(signature)
        return layer, torch.zeros((target["batch_size"], *sample_shape))

    unique = list(dict.fromkeys(signatures))
    latencies = time_modules([partial(build, s) for s in unique], target)
    return dict(zip(unique, latencies, strict=True))
