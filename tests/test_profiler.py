"""The latency profiler on this machine's CPU, with both runtimes for real: medians, spreads,
repeats, the ONNX session computing what torch computes, and one-line errors for devices or
runtimes this machine lacks."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import ray
import torch

from search_spaces import SearchSpace
from workers.profiler import (
    DEVICE_ONLY,
    RUNTIMES,
    cuda_event_samples,
    measure_latency,
    measure_layers,
    onnx_session,
    runner,
)

SPACE = {"name": "cnn1d", "kwargs": {"input_length": 40, "num_classes": 10}}


def target(**changes: object) -> dict:
    settings = {"name": "t", "device": "cpu", "runtime": "torch", "threads": 1, "batch_size": 2}
    return settings | {"warmup": 2, "repeats": 7} | changes


#: The runtimes this machine's CPU runs (``cudagraph`` needs a GPU, see the test below).
CPU_RUNTIMES = [r for r in RUNTIMES if r not in DEVICE_ONLY]


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_subnet_latency_is_a_median_with_spread(space: SearchSpace, runtime: str) -> None:
    configs = [space.min(), space.max()]
    results = measure_latency(SPACE, configs, target(runtime=runtime), [40])
    here = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    assert len(results) == 2
    for r in results:
        assert set(r) == {"median_ms", "spread_ms", "repeats", "node_id"}
        assert r["median_ms"] > 0 and r["spread_ms"] >= 0 and r["repeats"] == 7
        assert r["node_id"] == here  # this process's Ray node, or "" when not connected


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_layer_table_entries(space: SearchSpace, runtime: str) -> None:
    signatures = space.layers(space.max(), (40,))
    table = measure_layers(SPACE, signatures, target(runtime=runtime))
    assert list(table) == list(dict.fromkeys(signatures))
    assert all(e["median_ms"] > 0 and e["repeats"] == 7 for e in table.values())


def test_onnx_session_computes_the_torch_network(space: SearchSpace, supernet) -> None:
    net = supernet.extract(space.sample(np.random.default_rng(2))).eval()
    x = torch.randn(3, 40)
    session = onnx_session(net, x, "cpu", threads=1)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, session.get_providers()) == (1, ["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without GPU")
def test_cuda_target_without_gpu_is_one_line(space: SearchSpace) -> None:
    with pytest.raises(RuntimeError, match=r"^target 't' needs CUDA; torch here sees no GPU$"):
        measure_latency(SPACE, [space.min()], target(device="cuda"), [40])


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    reason="checks the error where onnxruntime has no CUDA provider",
)
def test_onnxruntime_without_cuda_provider_is_one_line(supernet, space: SearchSpace) -> None:
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider for device 'cuda'; available"):
        onnx_session(supernet.extract(space.min()), torch.zeros(1, 40), "cuda", threads=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_each_run_alone() -> None:
    a = torch.randn(2048, 2048, device="cuda")
    small = cuda_event_samples(lambda: a @ a, warmup=3, repeats=10)
    large = cuda_event_samples(lambda: [a @ a for _ in range(8)], warmup=3, repeats=10)
    assert np.all(small > 0) and 4 < np.median(large) / np.median(small) < 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_computes_the_eager_forward(supernet, space: SearchSpace) -> None:
    net = supernet.extract(space.max()).cuda().eval()
    x = torch.randn(2, 40, device="cuda")
    with torch.inference_mode():
        expected = net(x).clone()
    replay = runner(net, x, target(device="cuda", runtime="cudagraph"))
    torch.testing.assert_close(replay(), expected)
