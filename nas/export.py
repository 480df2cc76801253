"""Export a measured subnet as a model that runs without this project.

Formats:

- ``pt2``: a ``torch.export`` program (``torch.export.load(path).module()``), dynamic batch.
- ``onnx``: an ONNX graph for onnxruntime, dynamic batch.
- ``safetensors``: weights, ``config.json`` and the static network's source file as a loader.

Every format holds exactly the network that was scored: the supernet's slice with the batch-norm
statistics recalibrated for this subnet, and the input normalisation inside the model.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nas.errors import NasError
from nas.spec import JobSpec
from nas.store import Store, SubnetRecord
from workers.datasets import load_dataset
from workers.evaluator import load_supernet

FORMATS = ("pt2", "onnx", "safetensors")


def load_subnet(store: Store, job_id: str, subnet_id: int) -> tuple[nn.Module, SubnetRecord]:
    """The scored subnet of a job as a static module in eval mode, with its record."""
    subnet = store.get_subnet(job_id, subnet_id)
    runs = [r for r in store.training_runs(job_id) if r.status == "done"]
    if not runs or subnet.weights_path is None:
        raise NasError(f"subnet {subnet_id} of job '{job_id}' has not been evaluated yet")
    space = JobSpec.model_validate(store.get_job(job_id).spec).space()
    supernet = load_supernet(
        {"name": space.name, "kwargs": space.describe()}, runs[-1].checkpoint_path
    )
    net = supernet.extract(subnet.config)
    try:
        net.load_state_dict(load_file(subnet.weights_path))
    except FileNotFoundError:
        raise NasError(
            f"weights of subnet {subnet_id} are missing: {subnet.weights_path}"
        ) from None
    return net.eval(), subnet


def example_input(store: Store, job_id: str, batch: int = 2) -> torch.Tensor:
    """A batch of zeros shaped like the job's dataset inputs (for tracing)."""
    spec = JobSpec.model_validate(store.get_job(job_id).spec)
    shape = load_dataset(**spec.dataset_kwargs()).x_train.shape[1:]
    return torch.zeros((batch, *shape))


def dynamic_batch() -> dict[int, torch.export.Dim]:
    return {0: torch.export.Dim("batch", min=1, max=1 << 16)}


def write_pt2(net: nn.Module, x: torch.Tensor, path: Path) -> None:
    """A ``torch.export`` program with a dynamic batch dimension."""
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=(dynamic_batch(),)), path)


def write_onnx(net: nn.Module, x: torch.Tensor, path: Path) -> None:
    """An ONNX graph (input ``x``, output ``logits``) with a dynamic batch dimension."""
    program = torch.export.export(net, (x,), dynamic_shapes=(dynamic_batch(),))
    torch.onnx.export(
        program,
        (x,),
        path,
        input_names=["x"],
        output_names=["logits"],
        dynamo=True,
        verbose=False,
    )


def write_safetensors(net: nn.Module, directory: Path, about: dict) -> Path:
    """Weights, ``config.json`` (``arch`` plus ``about``) and the static network's source file.

    The static network's module imports only torch and defines ``load(directory)``, so the
    folder alone rebuilds the model.
    """
    path = directory / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    loader = Path(inspect.getsourcefile(type(net)))
    shutil.copy(loader, directory / loader.name)
    config = {
        "arch": net.arch,
        **about,
        "usage": f"from {loader.stem} import load; model = load(directory)",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return path


def export_subnet(store: Store, job_id: str, subnet_id: int, fmt: str, out_dir: str | Path) -> Path:
    """Write a job's subnet in ``fmt`` under ``out_dir``; return the model file's path."""
    if fmt not in FORMATS:
        raise NasError(f"unknown export format '{fmt}'; available: {', '.join(FORMATS)}")
    net, subnet = load_subnet(store, job_id, subnet_id)
    x = example_input(store, job_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "pt2":
        write_pt2(net, x, out / "model.pt2")
        return out / "model.pt2"
    if fmt == "onnx":
        write_onnx(net, x, out / "model.onnx")
        return out / "model.onnx"
    about = {
        "subnet": {"job": job_id, "id": subnet_id, "config": subnet.config},
        "metrics": subnet.metrics,
    }
    return write_safetensors(net, out, about)
