"""Jobs submitted to a real two-node Ray cluster through the Ray Jobs API, with their state in
the real PostgreSQL server: end to end, four at once, and surviving killed processes.

The cluster (``ray.cluster_utils``) runs in a child process so that only its own processes are
stopped afterwards (``ray stop`` would stop every Ray instance on the host). Its head has no
CPUs of its own: it runs the controllers (Ray job entrypoints, which take none), and every
training, evaluation and measurement runs on the second node. The GCS listens on a free port
(never Redis's 6379), the dashboard and its Jobs API on 127.0.0.1, and token authentication is
on, with a token made for this test.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from nas.store import Store
from tests.conftest import REPO, tiny_spec
from tests.test_hardware_routing import free_port

JOB_TIMEOUT_S = 300
MEASURED = ["accuracy", "test_accuracy", "macs", "params", "latency_ms@cpu"]


CANCELLED_EPOCHS = 40


def cluster_spec(name: str) -> dict:
    """A job of a few seconds of work: digits, three epochs, six subnets."""
    # no latency bound: four jobs starting at once load the node, and a bound checked on a
    # loaded node is a check of the load, not of the cluster operation tested here
    spec = tiny_spec(name=name, dataset={"name": "digits"}, constraints=[])
    spec["training"].update(epochs=3, batch_size=128)
    spec["hardware_targets"][0].update(warmup=1, repeats=3)
    spec["search"].update(
        profile_samples=2, budget=6, batch=2, population=12, generations=4, evaluators=1
    )
    return spec


def agent_ports() -> dict[str, int]:
    """Free ports for a node's agents: their defaults are fixed numbers, which the test
    session's own local Ray instance already holds (the Jobs API then finds no agent)."""
    names = ("dashboard_agent_listen_port", "metrics_agent_port", "metrics_export_port")
    return {name: free_port() for name in names}


def serve_cluster() -> None:
    """In the child: start the cluster, print its addresses, keep it up until stdin closes."""
    from ray.cluster_utils import Cluster

    dashboard = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "gcs_server_port": free_port(),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
            **agent_ports(),
        },
    )
    try:
        worker = cluster.add_node(num_cpus=2, resources={"worker_node": 1}, **agent_ports())
        cluster.wait_for_nodes()
        report = {"jobs_api": f"http://127.0.0.1:{dashboard}", "worker": worker.node_id}
        print(json.dumps(report), flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


def client_token() -> str:
    """The token this process's Ray client sends: ``RAY_AUTH_TOKEN``, else the token file (a
    local Ray instance of the test session may have written it, and Ray keeps the token it
    first read for the life of the process), else a new one in ``RAY_AUTH_TOKEN``."""
    token = os.environ.get("RAY_AUTH_TOKEN", "")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.is_file():
        token = path.read_text().strip()
    if not token:
        token = secrets.token_hex(32)
        os.environ["RAY_AUTH_TOKEN"] = token
    return token


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict]:
    env = os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": client_token(),
        "RAY_USAGE_STATS_ENABLED": "0",
        # job entrypoints run `nas` from the environment the cluster was started in
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tests.test_cluster_jobs import serve_cluster; serve_cluster()",
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line, "the Ray cluster did not start"
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        os.environ.update({k: env[k] for k in saved})  # the nas commands below send the token
        try:
            yield json.loads(line)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def nas(*args: str) -> tuple[int, str, str]:
    """Run the ``nas`` command in a process of its own, as a user would; its exit code, stdout
    and stderr. (In this process Ray may have read its auth settings before the cluster's token
    was set, and it keeps what it read.)"""
    result = subprocess.run(
        [sys.executable, "-m", "nas.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr


def submit(spec: dict, tmp: Path, cluster: dict, db: str) -> str:
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    args = ["submit", str(path), "--address", cluster["jobs_api"], "--db", db, "--json"]
    code, out, err = nas(*args, "--artifacts", str(tmp / "artifacts"))
    assert code == 0, err
    return json.loads(out)["job"]


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_done(db: str, job_id: str) -> None:
    def finished() -> bool:
        with Store(db) as store:
            job = store.get_job(job_id)
        if job.status == "failed":
            _, logs, _ = nas("logs", job_id, "--db", db)
            pytest.fail(f"job {job_id} failed: {job.error}\n{logs[-3000:]}")
        return job.status == "done"

    wait_until(finished, f"job {job_id}")


def counts(db: str, job_id: str) -> dict:
    """What a finished job holds: epochs, curve points, subnets, measurements, front."""
    with Store(db) as store:
        [run] = store.training_runs(job_id)
        subnets = store.subnets(job_id)
        front = store.front(job_id)
        curve = store.curve(run.id)
    return {
        "epochs": run.epochs_done,
        "curve": sorted((p.epoch, p.name) for p in curve),
        "subnets": len(subnets),
        "configs": len({json.dumps(s.config, sort_keys=True) for s in subnets}),
        "measurements": sum(len(s.metrics) for s in subnets),
        "front": len(front.points) > 0,
    }


def processes(matches: Callable[[list[str]], bool]) -> list[psutil.Process]:
    """This host's processes whose command line ``matches``."""
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and matches(p.info["cmdline"])
    ]


def titled(title: str) -> Callable[[list[str]], bool]:
    """A Ray worker by the title Ray gives it: ``ray::SupernetTrainer.run_epoch`` and so on."""
    return lambda cmdline: " ".join(cmdline).startswith(title)


def kill_one(matches: Callable[[list[str]], bool], what: str) -> None:
    """SIGKILL the one process that ``matches``."""
    found = processes(matches)
    assert len(found) == 1, f"expected one {what}, found {len(found)}"
    os.kill(found[0].pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def shared(cluster: dict, postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four jobs submitted at once and run to the end: the reference for the fault tests."""
    tmp = tmp_path_factory.mktemp("cluster")
    ids = [submit(cluster_spec(f"job-{i}"), tmp, cluster, postgres_url) for i in range(4)]
    for job_id in ids:
        wait_done(postgres_url, job_id)
    return {"tmp": tmp, "ids": ids, "reference": counts(postgres_url, ids[0])}


def test_submitted_jobs_run_on_the_cluster_and_store_every_row(
    cluster: dict, postgres_url: str, shared: dict
) -> None:
    expected = {
        "epochs": 3,
        "curve": sorted(
            (e, n) for e in (1, 2, 3) for n in ("train_loss", "val_acc/largest", "val_acc/smallest")
        ),
        "subnets": 6,
        "configs": 6,
        "measurements": 6 * 5,  # accuracy, test accuracy, MACs, params, latency on cpu
        "front": True,
    }
    for job_id in shared["ids"]:  # four jobs wrote to one PostgreSQL at once; nothing is lost
        assert counts(postgres_url, job_id) == expected
    job_id = shared["ids"][0]
    code, out, _ = nas("pareto", job_id, "--db", postgres_url, "--json")
    assert code == 0 and json.loads(out)["points"]
    code, out, _ = nas("status", job_id, "--db", postgres_url, "--json")
    controller = json.loads(out)["controller"]
    assert controller["state"] == "SUCCEEDED"
    assert controller["address"] == cluster["jobs_api"]
    code, logs, _ = nas("logs", job_id, "--db", postgres_url)
    assert code == 0 and f"done: job {job_id}" in logs


def test_a_killed_trainer_is_restarted_from_its_checkpoint(
    cluster: dict, postgres_url: str, shared: dict
) -> None:
    job_id = submit(cluster_spec("job-0"), shared["tmp"], cluster, postgres_url)

    def first_epoch_stored() -> bool:
        with Store(postgres_url) as store:
            runs = store.training_runs(job_id)
        return bool(runs) and runs[0].epochs_done >= 1

    wait_until(first_epoch_stored, "the first epoch")
    kill_one(titled("ray::SupernetTrainer"), "supernet trainer")
    wait_until(lambda: bool(processes(titled("ray::evaluate_configs"))), "an evaluation task")
    kill_one(titled("ray::evaluate_configs"), "evaluation task")
    wait_done(postgres_url, job_id)
    assert counts(postgres_url, job_id) == shared["reference"]


def test_a_killed_controller_resumes_when_the_job_is_submitted_again(
    cluster: dict, postgres_url: str, shared: dict
) -> None:
    spec = cluster_spec("job-0")
    job_id = submit(spec, shared["tmp"], cluster, postgres_url)

    def measuring() -> bool:
        with Store(postgres_url) as store:
            return len(store.subnets(job_id, require=["accuracy"])) >= 2

    wait_until(measuring, "the first measured subnets")
    kill_one(
        lambda cmd: "python" in Path(cmd[0]).name and cmd[-6:-4] == ["resume", job_id],
        "controller",
    )
    with Store(postgres_url) as store:
        assert store.get_job(job_id).status == "running"  # nobody told the database
        before = {s.id: s.metrics for s in store.subnets(job_id, require=MEASURED)}
        [run] = store.training_runs(job_id)
        curve_before = store.curve(run.id)

    def controller_gone() -> bool:
        _, out, _ = nas("status", job_id, "--db", postgres_url, "--json")
        return json.loads(out)["controller"]["state"] == "FAILED"

    wait_until(controller_gone, "Ray to notice the dead controller")
    assert submit(spec, shared["tmp"], cluster, postgres_url) == job_id  # resumed, not new
    wait_done(postgres_url, job_id)
    assert counts(postgres_url, job_id) == shared["reference"]
    with Store(postgres_url) as store:  # finished work was kept, not redone (latency varies)
        after = {s.id: s.metrics for s in store.subnets(job_id)}
        assert store.curve(run.id) == curve_before
    assert before and all(after[i] == metrics for i, metrics in before.items())


def test_a_rejected_token_is_one_clear_line(cluster: dict, postgres_url: str, tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(cluster_spec("never-runs")))
    result = subprocess.run(
        [sys.executable, "-m", "nas.cli", "submit", str(path), "--address", cluster["jobs_api"]]
        + ["--db", postgres_url],
        env=os.environ | {"RAY_AUTH_TOKEN": "not-the-token"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"nas: error: the Ray cluster at {cluster['jobs_api']} rejected the authentication "
        "token: set RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the token the cluster was started with"
    )
    with Store(postgres_url) as store:
        assert all(job.name != "never-runs" for job in store.list_jobs())


def test_cancel_stops_a_submitted_job(cluster: dict, postgres_url: str, shared: dict) -> None:
    # far more epochs than a cancel takes to land: three digits epochs can all finish between
    # seeing the first one and Ray stopping the controller
    spec = cluster_spec("cancelled")
    spec["training"]["epochs"] = CANCELLED_EPOCHS
    job_id = submit(spec, shared["tmp"], cluster, postgres_url)

    def training() -> bool:
        with Store(postgres_url) as store:
            runs = store.training_runs(job_id)
        return bool(runs) and runs[0].epochs_done >= 1

    wait_until(training, "the first epoch")
    assert nas("cancel", job_id, "--db", postgres_url)[0] == 0

    def stopped() -> bool:
        _, out, _ = nas("status", job_id, "--db", postgres_url, "--json")
        return json.loads(out)["controller"]["state"] == "STOPPED"

    wait_until(stopped, "Ray to stop the controller")
    with Store(postgres_url) as store:
        assert store.get_job(job_id).status == "cancelled"
        assert store.training_runs(job_id)[0].epochs_done < CANCELLED_EPOCHS
