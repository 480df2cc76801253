"""Routing of latency measurements on a real two-node Ray cluster (``ray.cluster_utils``): only
one node holds the target's custom resource, and every measurement of that target runs there,
alone on it.

The cluster runs in a child process: a test session may already be connected to its own local
Ray instance, and a process holds one connection. Its GCS listens on a free port picked here
(never Redis's 6379). Ray's token authentication stays as Ray configures it: a token in
``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` reaches the child through its environment and home.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import REPO

EDGE_CPUS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe() -> None:
    """In the child: start the cluster, measure on target ``edge``, print what ran where."""
    import numpy as np
    import ray
    from ray.cluster_utils import Cluster

    from nas.errors import ClusterError
    from nas.hardware import (
        HardwareTargetSpec,
        measure_layer_table,
        measure_subnets,
        measurement_options,
    )
    from search_spaces import get_space

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    try:
        edge = cluster.add_node(num_cpus=EDGE_CPUS, resources={"hw_edge": 1})
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        space = get_space("cnn1d")
        data = {"name": "cnn1d", "kwargs": space.describe()}
        target = HardwareTargetSpec(name="edge", warmup=1, repeats=3, resources={"hw_edge": 1})
        configs = [space.min(), space.max(), space.sample(np.random.default_rng(0))]
        subnets = ray.get(measure_subnets(target, data, configs, [40]))
        layers = ray.get(measure_layer_table(target, data, space.layers(space.max(), (40,))))
        options = measurement_options(target)
        missing = HardwareTargetSpec(name="nowhere", resources={"hw_gpu_farm": 1})
        try:
            measurement_options(missing)
            error = ""
        except ClusterError as caught:
            error = str(caught)
        report = {
            "edge": edge.node_id,
            "head": cluster.head_node.node_id,
            "subnet_nodes": [r["node_id"] for r in subnets],
            "layer_nodes": [r["node_id"] for r in layers.values()],
            "num_cpus": options["num_cpus"],
            "error": error,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(report))


def test_measurements_of_a_target_run_on_its_node_alone() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from tests.test_hardware_routing import probe; probe()"],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["edge"] != report["head"]
    assert report["subnet_nodes"] == [report["edge"]] * 3
    assert report["layer_nodes"] and set(report["layer_nodes"]) == {report["edge"]}
    assert report["num_cpus"] == EDGE_CPUS  # the whole node, not one thread's worth
    assert report["error"] == (
        "no alive Ray node offers {'hw_gpu_farm': 1.0} for hardware target 'nowhere'"
    )
