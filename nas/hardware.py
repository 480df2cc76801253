"""Hardware targets: what a user declares, and where on the Ray cluster its measurements run.

The measuring itself (warm-up, repeats, CUDA events, runtimes) is ``workers.profiler``; this
module sends it plain settings. Ray is imported only when a measurement is dispatched.

Exclusive use of a node: a latency measured beside other work measures that work too. So every
measurement of a target runs on one chosen node (the first alive node, by id, that holds the
target's resources, and a GPU for ``cuda``), pinned there by node affinity, and asks for all of
that node's CPUs (and, on ``cuda``, all its GPUs): Ray then starts it only when nothing else
holds any of them, and starts nothing else there until it returns. Pinning to one node also
keeps a target's layer table and its subnet measurements on the same hardware.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from nas.errors import ClusterError
from workers.profiler import DEVICE_ONLY, DEVICES, RUNTIMES, measure_latency, measure_layers


class HardwareTargetSpec(BaseModel):
    """One place a model will run: device, runtime, threads, batch and measuring protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    device: str = "cpu"
    runtime: str = "torch"
    threads: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1)
    #: One sample's shape, without the batch; ``None``: the dataset's sample shape.
    input_shape: list[int] | None = Field(None, min_length=1)
    warmup: int = Field(10, ge=0)
    repeats: int = Field(30, ge=3)
    #: Ray resources a measurement asks for, routing it to matching nodes (``{"hw_edge": 1}``).
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("device", "runtime")
    @classmethod
    def supported(cls, value: str, info: ValidationInfo) -> str:
        allowed = {"device": DEVICES, "runtime": RUNTIMES}[info.field_name]
        if value not in allowed:
            raise ValueError(
                f"unknown {info.field_name} '{value}'; supported: {', '.join(allowed)}"
            )
        return value

    @model_validator(mode="after")
    def runtime_on_its_device(self) -> HardwareTargetSpec:
        needed = DEVICE_ONLY.get(self.runtime)
        if needed and self.device != needed:
            raise ValueError(f"runtime '{self.runtime}' runs on device '{needed}' only")
        return self

    @field_validator("input_shape")
    @classmethod
    def positive_shape(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and min(shape) < 1:
            raise ValueError(f"input_shape must hold positive sizes, got {shape}")
        return shape


def measurement_options(target: HardwareTargetSpec) -> dict[str, Any]:
    """Ray options that run a measurement alone on the target's node (see the module doc)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from nas.cluster import WORKER_RETRIES

    needed = dict(target.resources) | ({"GPU": 1.0} if target.device == "cuda" else {})
    offering = [n for n in ray.nodes() if n["Alive"] and _offers(n["Resources"], needed)]
    if not offering:
        raise ClusterError(
            f"no alive Ray node offers {needed or 'a CPU'} for hardware target '{target.name}'"
        )
    # a node without CPUs of its own (a head kept for drivers, say) measures nothing
    nodes = sorted(
        (n for n in offering if n["Resources"].get("CPU", 0.0) >= target.threads),
        key=lambda n: n["NodeID"],
    )
    if not nodes:
        most = max(n["Resources"].get("CPU", 0.0) for n in offering)
        raise ClusterError(
            f"hardware target '{target.name}' asks for threads={target.threads}, but the nodes "
            f"that offer its resources have at most {most:g} CPUs"
        )
    node = nodes[0]
    cpus = node["Resources"]["CPU"]
    return {
        "max_retries": WORKER_RETRIES,
        "num_cpus": cpus,
        "num_gpus": node["Resources"].get("GPU", 0.0) if target.device == "cuda" else 0,
        "resources": dict(target.resources),
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
    }


def _offers(resources: Mapping[str, float], needed: Mapping[str, float]) -> bool:
    return all(resources.get(name, 0.0) >= amount for name, amount in needed.items())


def measure_subnets(
    target: HardwareTargetSpec,
    space: Mapping[str, Any],
    configs: Sequence[Mapping[str, int]],
    input_shape: Sequence[int],
) -> Any:
    """A Ray future: the latency of each config on ``target``, measured on its node."""
    import ray

    task = ray.remote(measure_latency).options(**measurement_options(target))
    return task.remote(space, list(configs), target.model_dump(), list(input_shape))


def measure_layer_table(
    target: HardwareTargetSpec, space: Mapping[str, Any], signatures: Sequence[str]
) -> Any:
    """A Ray future: ``{layer signature: latency}`` on ``target``, measured on its node."""
    import ray

    task = ray.remote(measure_layers).options(**measurement_options(target))
    return task.remote(space, list(signatures), target.model_dump())
