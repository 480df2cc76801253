"""Exported subnets compute what the extracted subnet computes: torch.export (pt2) and ONNX with
a dynamic batch, and the safetensors folder that runs without this project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given

from nas.export import write_safetensors
from search_spaces import Supernet
from search_spaces.base import SearchSpace
from tests.supernets import (
    INPUT_LENGTH,
    SEEDS,
    assert_exports_match,
    randomised_supernet,
    samples,
    seeded,
    signals,
    small_mobilenetv3,
    small_transformer,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# -- pt2 and onnx -------------------------------------------------------------------------------


# a seed does not shrink into anything simpler, and each example takes seconds: no shrinking;
# 20 configs of exports here, many more in the extraction property test of test_search_space
@seeded(20)
@given(seed=SEEDS)
def test_pt2_and_onnx_match_the_extracted_subnet(
    space: SearchSpace, supernet: Supernet, tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    config = space.sample(np.random.default_rng(seed))
    net = supernet.extract(config)
    assert not net.training
    directory = tmp_path_factory.mktemp("export")
    assert_exports_match(net, (INPUT_LENGTH,), directory, seed)


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
from MODULE import load
model = load(".")
assert not model.training
with torch.no_grad():
    logits = model(torch.from_numpy(np.load("x.npy")))
np.save("logits.npy", logits.numpy())
"""


def run_standalone(
    directory: Path, body: str, module: str = "cnn1d_net"
) -> subprocess.CompletedProcess:
    script = STANDALONE.replace("BODY", body.replace("MODULE", module))
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
    x = signals(6, 3)
    with torch.no_grad():
        expected = net(x).numpy()
        torch.testing.assert_close(supernet(x, config).numpy(), expected, rtol=0, atol=1e-5)
    about = {"subnet": {"job": "job-1", "id": 7, "config": config}}
    path = write_safetensors(net, tmp_path, about)
    assert path == tmp_path / "model.safetensors" and path.is_file()
    assert (tmp_path / "cnn1d_net.py").is_file()

    written = json.loads((tmp_path / "config.json").read_text())
    assert written["arch"] == net.arch
    assert written["subnet"] == about["subnet"]
    assert "load" in written["usage"]

    np.save(tmp_path / "x.npy", x.numpy())
    result = run_standalone(tmp_path, RUN_MODEL)
    assert result.returncode == 0, result.stderr
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


@pytest.mark.parametrize(
    ("make_space", "shape", "module"),
    [
        (small_mobilenetv3, (3, 20, 20), "mobilenetv3_net"),
        (small_transformer, (INPUT_LENGTH,), "transformer_net"),
    ],
)
def test_safetensors_folder_of_each_space_runs_without_the_project(
    make_space, shape: tuple[int, ...], module: str, tmp_path: Path
) -> None:
    space = make_space()
    supernet = randomised_supernet(space, seed=5)
    config = space.sample(np.random.default_rng(11))
    net = supernet.extract(config)
    x = samples(shape, 4, 3)
    with torch.no_grad():
        expected = net(x).numpy()
    write_safetensors(net, tmp_path, {"subnet": {"config": config}})
    assert (tmp_path / f"{module}.py").is_file()
    np.save(tmp_path / "x.npy", x.numpy())
    result = run_standalone(tmp_path, RUN_MODEL, module)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=0, atol=1e-5)
