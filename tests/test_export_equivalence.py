"""Exported subnets compute what the extracted subnet computes: torch.export (pt2) and ONNX with
a dynamic batch, and the safetensors folder that runs without this project."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nas.export import write_onnx, write_pt2, write_safetensors
from search_spaces import Supernet, get_space
from search_spaces.base import SearchSpace
from search_spaces.elastic import ElasticBatchNorm1d

INPUT_LENGTH = 40
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def randomised_supernet(space: SearchSpace, seed: int = 0) -> Supernet:
    """A supernet in eval mode with random weights, batch-norm statistics and affine params,
    and input normalisation that is not the identity."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        supernet = space.build_supernet(input_mean=0.3, input_std=1.7)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in supernet.modules():
            if isinstance(module, (ElasticBatchNorm1d, nn.BatchNorm1d)):
                n = module.running_mean.numel()
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.5 * torch.randn(n, generator=generator))
        supernet.classifier.bias.copy_(torch.randn(space.num_classes, generator=generator))
    return supernet.eval()


def signals(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, INPUT_LENGTH, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster and does not thrash on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return get_space("cnn1d")


@pytest.fixture(scope="module")
def supernet(space: SearchSpace) -> Supernet:
    return randomised_supernet(space)


# -- pt2 and onnx -------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_pt2_and_onnx_match_the_extracted_subnet(
    space: SearchSpace, supernet: Supernet, tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    config = space.sample(np.random.default_rng(seed))
    net = supernet.extract(config)
    assert not net.training
    directory = tmp_path_factory.mktemp("export")
    write_pt2(net, torch.zeros(2, INPUT_LENGTH), directory / "model.pt2")
    write_onnx(net, torch.zeros(2, INPUT_LENGTH), directory / "model.onnx")

    program = torch.export.load(directory / "model.pt2").module()
    session = onnxruntime.InferenceSession(
        str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["logits"]

    for batch in (5, 1):  # neither is the traced batch of 2: the batch dimension is dynamic
        x = signals(batch, seed)
        with torch.no_grad():
            expected = net(x)
            from_pt2 = program(x)
        (from_onnx,) = session.run(["logits"], {"x": x.numpy()})
        assert expected.shape == (batch, space.num_classes)
        torch.testing.assert_close(from_pt2, expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(from_onnx, expected.numpy(), rtol=0, atol=1e-5)


# -- safetensors: the folder runs on its own ----------------------------------------------------

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, no script directory on the path)
# with the export folder as its working directory. Importing any project package fails loudly.
STANDALONE = """
import importlib.abc, os, sys

BLOCKED = {"nas", "search_spaces", "workers"}

class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"the export imported project package {name!r}")
        return None

sys.meta_path.insert(0, Forbid())
project = os.path.realpath(sys.argv[1])
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != project]
sys.path.insert(0, os.getcwd())
for module in list(sys.modules):
    assert module.partition(".")[0] not in BLOCKED, module

import numpy as np
import torch
BODY
assert not BLOCKED & {m.partition(".")[0] for m in sys.modules}
"""

RUN_MODEL = """
from cnn1d_net import load
model = load(".")
assert not model.training
with torch.no_grad():
    logits = model(torch.from_numpy(np.load("x.npy")))
np.save("logits.npy", logits.numpy())
"""


def run_standalone(directory: Path, body: str) -> subprocess.CompletedProcess:
    script = STANDALONE.replace("BODY", body)
    return subprocess.run(
        [sys.executable, "-I", "-c", script, str(PROJECT_ROOT)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("which", ["max", "sampled"])
def test_safetensors_folder_runs_without_the_project(
    space: SearchSpace, supernet: Supernet, tmp_path: Path, which: str
) -> None:
    config = space.max() if which == "max" else space.sample(np.random.default_rng(2024))
    net = supernet.extract(config)
    about = {"subnet": {"job": "job-1", "id": 7, "config": config}}
    path = write_safetensors(net, tmp_path, about)
    assert path == tmp_path / "model.safetensors" and path.is_file()
    assert (tmp_path / "cnn1d_net.py").is_file()

    written = json.loads((tmp_path / "config.json").read_text())
    assert written["arch"] == net.arch
    assert written["subnet"] == about["subnet"]
    assert "load" in written["usage"]

    x = signals(6, 3)
    np.save(tmp_path / "x.npy", x.numpy())
    result = run_standalone(tmp_path, RUN_MODEL)
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=0, atol=1e-5)


def test_standalone_guard_blocks_project_imports(tmp_path: Path) -> None:
    """The guard above is what makes the safetensors test meaningful: check that it bites."""
    body = """
import importlib
for name in ("nas", "search_spaces.cnn1d", "workers.evaluator"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        print("blocked", name, error)
"""
    result = run_standalone(tmp_path, body)
    assert result.returncode == 0, result.stderr
    blocked = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("blocked")]
    assert blocked == ["nas", "search_spaces.cnn1d", "workers.evaluator"]
    assert "the export imported project package" in result.stdout
    # and without the guard the same interpreter would find them (the editable install)
    found = subprocess.run(
        [sys.executable, "-I", "-c", "import search_spaces"], cwd=tmp_path, capture_output=True
    )
    assert found.returncode == 0
