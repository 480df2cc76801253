"""The HTTP API against the real app and a real database (SQLite and PostgreSQL): every route,
the token, and each kind of bad input, which must get a JSON error with the right status."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import onnxruntime
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from nas.cli import main
from nas.controller import Controller
from nas.errors import JobCancelled, NasError
from nas.export import load_subnet
from nas.service.auth import load_token
from nas.service.jobs import ProcessRunner
from nas.store import Store
from tests.conftest import empty_database, tiny_spec
from tests.finished_job import TOKEN, Served, finished_spec, serve_finished_job

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Served:
    directory = tmp_path_factory.mktemp(request.param)
    return serve_finished_job(empty_database(request.param, request, directory), directory)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(served.app, headers=AUTH) as opened:
        yield opened


def error_of(response, status: int) -> str:
    """The one-line message of a JSON error with the expected status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def job_count(client: TestClient) -> int:
    return len(client.get("/api/jobs").json())


# -- access -------------------------------------------------------------------------------------


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [(m, p) for p, ops in paths.items() for m in ops if p.startswith("/api/")]


def test_health_and_page_need_no_token(served: Served) -> None:
    anonymous = TestClient(served.app)
    assert anonymous.get("/health").json() == {"status": "ok"}
    assert '<canvas id="hypervolume">' in anonymous.get(f"/jobs/{served.job.id}").text
    assert anonymous.get("/static/vendor/chart.umd.min.js").status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer \u00e9"],
    ids=["none", "wrong", "not-bearer", "longer", "non-ascii"],
)
def test_every_api_route_needs_the_token(
    served: Served, client: TestClient, header: str | None
) -> None:
    anonymous = TestClient(served.app)
    before = job_count(client)
    headers = {"Authorization": header.encode("utf-8")} if header else {}
    for method, path in api_routes(client):
        url = path.format(job_id=served.job.id, subnet_id=served.job.front[0])
        response = anonymous.request(method.upper(), url, headers=headers, content=b"name: x")
        assert "token" in error_of(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    assert job_count(client) == before


def test_openapi_declares_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" not in schema["paths"]["/health"]["get"]
    assert schema["paths"]["/api/jobs"]["get"]["security"] == [{"HTTPBearer": []}]


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAS_API_TOKEN", raising=False)
    token, generated = load_token(None, "127.0.0.1")
    assert generated and len(token) >= 16
    with pytest.raises(NasError, match="refusing to listen on 0.0.0.0 without a token"):
        load_token(None, "0.0.0.0")
    (tmp_path / "token").write_text("from-a-file-0123456789\n")
    assert load_token(str(tmp_path / "token"), "0.0.0.0") == ("from-a-file-0123456789", False)
    with pytest.raises(NasError, match="cannot read token file"):
        load_token(str(tmp_path / "absent"), "127.0.0.1")
    monkeypatch.setenv("NAS_API_TOKEN", "short")
    with pytest.raises(NasError, match="at least 16"):
        load_token(None, "::1")


def test_serve_refuses_a_public_address_without_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("NAS_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--db", str(tmp_path / "nas.db")]) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err


# -- reading a finished job ---------------------------------------------------------------------


def test_list_and_status(served: Served, client: TestClient) -> None:
    listed = {j["id"]: j for j in client.get("/api/jobs").json()}
    assert listed[served.job.id]["status"] == "done"
    status = client.get(f"/api/jobs/{served.job.id}").json()
    assert status["subnets"] == len(served.job.subnets)
    assert status["fronts"] == ["", "cpu"]
    assert [s["state"] for s in status["stages"]] == ["done"] * 4
    assert [i["hypervolume"] for i in status["search"]] == [0.1, 0.2]
    assert status["search"][0]["predictors"]["accuracy"]["model"] == "ridge"
    assert status["latency_predictors"]["cpu"]["layers"] == 1
    assert status["spec"] == finished_spec()


def test_fronts(served: Served, client: TestClient) -> None:
    fronts = client.get(f"/api/jobs/{served.job.id}/fronts").json()
    assert [(f["target"], f["objectives"]) for f in fronts] == [
        (None, ["accuracy", "macs"]),
        ("cpu", ["accuracy", "latency_ms@cpu"]),
    ]
    default = client.get(f"/api/jobs/{served.job.id}/front").json()
    assert default == fronts[0]
    assert [p["subnet"] for p in default["points"]] == served.job.front
    cpu = client.get(f"/api/jobs/{served.job.id}/front", params={"target": "cpu"}).json()
    assert cpu == fronts[1]
    macs = [p["metrics"]["macs"] for p in default["points"]]
    assert macs == sorted(macs)
    assert any("predicted" in p for p in default["points"] + cpu["points"])


def test_training_runs_with_curves_and_decisions(served: Served, client: TestClient) -> None:
    done, stopped = client.get(f"/api/jobs/{served.job.id}/runs").json()
    assert (done["status"], done["epochs_done"], stopped["status"]) == ("done", 4, "stopped")
    assert done["tuned"] == {"lr": 0.01}
    assert done["curves"]["val_acc/largest"] == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert sorted(done["curves"]) == ["loss", "val_acc/largest", "val_acc/smallest"]
    assert [d["stop"] for d in done["decisions"]] == [False, False, False]
    assert [(d["epoch"], d["stop"]) for d in stopped["decisions"]] == [(1, False), (2, True)]
    assert stopped["decisions"][-1]["reason"].startswith("stop")


def test_predictions(served: Served, client: TestClient) -> None:
    answer = client.get(f"/api/jobs/{served.job.id}/predictions").json()
    searched = len(served.job.subnets) - 4
    assert len(answer["points"]) == 2 * searched and not answer["truncated"]
    for p in answer["points"]:  # the fixture predicts 0.02 above the measured value
        assert p["predicted"] == pytest.approx(p["measured"] + 0.02)
    iterations = [p["iteration"] for p in answer["points"]]
    assert iterations == sorted(iterations)  # subnets in the order the search made them
    two = client.get(f"/api/jobs/{served.job.id}/predictions", params={"limit": 2}).json()
    assert two["truncated"] and two["points"] == answer["points"][:2]


def test_subnet(served: Served, client: TestClient) -> None:
    searched = served.job.subnets[5]
    subnet = client.get(f"/api/jobs/{served.job.id}/subnets/{searched}").json()
    assert subnet["source"] == "search" and subnet["exportable"]
    assert set(subnet["metrics"]) == {
        "accuracy", "test_accuracy", "macs", "params", "latency_ms@cpu",
    }  # fmt: skip
    assert set(subnet["predicted"]) == {"accuracy", "latency_ms@cpu"}
    unscored = client.get(f"/api/jobs/{served.job.id}/subnets/{served.job.unscored}").json()
    assert not unscored["exportable"]


# -- exports ------------------------------------------------------------------------------------


def test_export_pt2_runs_in_torch(served: Served, client: TestClient, tmp_path: Path) -> None:
    subnet = served.job.front[0]
    response = client.get(f"/api/jobs/{served.job.id}/subnets/{subnet}/export?format=pt2")
    assert response.status_code == 200, response.text
    assert (
        f'filename="{served.job.id}-subnet{subnet}.pt2"' in response.headers["content-disposition"]
    )
    (tmp_path / "model.pt2").write_bytes(response.content)
    program = torch.export.load(tmp_path / "model.pt2").module()
    with Store(served.url) as store:
        net, _ = load_subnet(store, served.job.id, subnet)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(program(x), net(x))


def test_export_onnx_and_safetensors(served: Served, client: TestClient, tmp_path: Path) -> None:
    if "sqlite" not in served.url:
        pytest.skip("the formats themselves do not depend on the database; pt2 covers both")
    subnet = served.job.front[-1]
    url = f"/api/jobs/{served.job.id}/subnets/{subnet}/export"
    onnx = client.get(url, params={"format": "onnx"})
    assert onnx.status_code == 200, onnx.text
    if onnx.headers["content-type"] == "application/zip":  # the graph and its weights file
        zipfile.ZipFile(io.BytesIO(onnx.content)).extractall(tmp_path / "onnx")
    else:
        (tmp_path / "onnx").mkdir()
        (tmp_path / "onnx" / "model.onnx").write_bytes(onnx.content)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"x": torch.zeros(2, 64).numpy()})
    assert logits.shape == (2, 10)
    folder = client.get(url, params={"format": "safetensors"})
    assert folder.headers["content-type"] == "application/zip"
    assert (
        f"{served.job.id}-subnet{subnet}-safetensors.zip" in folder.headers["content-disposition"]
    )
    zipfile.ZipFile(io.BytesIO(folder.content)).extractall(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["subnet"]["id"] == subnet
    sys.path.insert(0, str(tmp_path))
    try:
        from cnn1d_net import load  # the copied loader: torch only

        assert load(str(tmp_path))(torch.zeros(1, 64)).shape == (1, 10)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cnn1d_net", None)


def test_export_errors(served: Served, client: TestClient) -> None:
    url = f"/api/jobs/{served.job.id}/subnets/{served.job.unscored}/export"
    assert "has not been evaluated yet" in error_of(client.get(url), 409)
    url = f"/api/jobs/{served.job.id}/subnets/{served.job.front[0]}/export"
    assert "format" in error_of(client.get(url, params={"format": "tflite"}), 422)


# -- unknown ids and bad parameters ---------------------------------------------------------------


JOB_ROUTES = [
    ("GET", "/api/jobs/{job}"),
    ("POST", "/api/jobs/{job}/cancel"),
    ("GET", "/api/jobs/{job}/fronts"),
    ("GET", "/api/jobs/{job}/front"),
    ("GET", "/api/jobs/{job}/runs"),
    ("GET", "/api/jobs/{job}/predictions"),
    ("GET", "/api/jobs/{job}/subnets/1"),
    ("GET", "/api/jobs/{job}/subnets/1/export?format=pt2"),
]


@pytest.mark.parametrize(("method", "route"), JOB_ROUTES)
def test_unknown_job_is_404(client: TestClient, method: str, route: str) -> None:
    response = client.request(method, route.format(job="feedbeef"))
    assert "unknown job 'feedbeef'" in error_of(response, 404)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("/api/jobs/{job}/front?target=gpu", "no front for target 'gpu'; available: '', 'cpu'"),
        ("/api/jobs/{job}/subnets/999999", "unknown subnet 999999"),
        ("/api/jobs/{job}/subnets/999999/export", "unknown subnet 999999"),
    ],
)
def test_unknown_front_or_subnet_is_404(
    served: Served, client: TestClient, route: str, expected: str
) -> None:
    assert expected in error_of(client.get(route.format(job=served.job.id)), 404)


def test_subnet_of_another_job_is_404(served: Served, client: TestClient) -> None:
    other = client.post("/api/jobs", content=yaml.safe_dump(tiny_spec())).json()["id"]
    subnet = served.job.front[0]
    assert f"unknown subnet {subnet} in job '{other}'" in error_of(
        client.get(f"/api/jobs/{other}/subnets/{subnet}"), 404
    )


@pytest.mark.parametrize(
    ("route", "where"),
    [
        ("/api/jobs/a%00b", "path.job_id"),
        ("/api/jobs/" + "a" * 65, "path.job_id"),
        ("/api/jobs/{job}/subnets/0", "path.subnet_id"),
        ("/api/jobs/{job}/subnets/-3", "path.subnet_id"),
        ("/api/jobs/{job}/subnets/99999999999999999999", "path.subnet_id"),
        ("/api/jobs/{job}/subnets/one", "path.subnet_id"),
        ("/api/jobs/{job}/front?target=a%00", "query.target"),
        ("/api/jobs/{job}/predictions?limit=0", "query.limit"),
        ("/api/jobs/{job}/predictions?limit=x", "query.limit"),
    ],
)
def test_bad_parameters_are_422(served: Served, client: TestClient, route: str, where: str) -> None:
    assert error_of(client.get(route.format(job=served.job.id)), 422).startswith(where)


# -- submitting and cancelling ------------------------------------------------------------------


def test_submit_yaml_and_json(served: Served, client: TestClient) -> None:
    text = yaml.safe_dump(tiny_spec(name="from-yaml"))
    created = client.post("/api/jobs", content=text, headers={"content-type": "application/yaml"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["name"], job["status"]) == ("from-yaml", "pending")
    assert served.runner.started[-1] == job["id"]
    created = client.post("/api/jobs", json=tiny_spec(name="from-json"))
    assert created.status_code == 201, created.text
    stored = client.get(f"/api/jobs/{created.json()['id']}").json()
    assert stored["spec"]["name"] == "from-json" and stored["status"] == "pending"
    assert served.runner.started[-1] == stored["id"]


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"name: x\nsearch_space: [cnn1d\n", "application/yaml", "spec: malformed YAML at line"),
        (b"{\"name\": ", "application/json", "spec: malformed JSON at line 1"),
        (b"", "application/json", "spec: malformed JSON"),
        (b"- a\n- b\n", "application/yaml", "expected a mapping at the top level, got list"),
        (b"\xff\xfe", "text/plain", "spec: not UTF-8 text"),
        (b"[" * 100_000, "application/json", "spec:"),
        (
            yaml.safe_dump(tiny_spec(search_space={"name": "nope"})).encode(),
            "application/yaml",
            "unknown search space 'nope'",
        ),
        (
            yaml.safe_dump(
                tiny_spec(search_space={"name": "cnn1d", "choices": {"depth.2": [9]}})
            ).encode(),
            "application/yaml",
            "value 9 is not a choice of dimension 'depth.2'",
        ),
        (json.dumps(tiny_spec(name="x" * 300)).encode(), "application/json", "spec: name:"),
        (json.dumps(tiny_spec(name="a\u0000b")).encode(), "application/json", "printable"),
        (json.dumps(tiny_spec(objectives=["macs"])).encode(), "application/json", "objectives"),
    ],
    ids=[
        "malformed-yaml", "malformed-json", "empty", "not-a-mapping", "not-utf8", "too-deep",
        "unknown-space", "value-outside-choices", "name-too-long", "control-characters",
        "bad-objectives",
    ],
)  # fmt: skip
def test_bad_spec_is_422_and_writes_nothing(
    served: Served, client: TestClient, body: bytes, content_type: str, expected: str
) -> None:
    before, started = job_count(client), list(served.runner.started)
    response = client.post("/api/jobs", content=body, headers={"content-type": content_type})
    assert expected in error_of(response, 422)
    assert job_count(client) == before and served.runner.started == started


def test_bad_spec_message_is_the_cli_message(client: TestClient, tmp_path: Path, capsys) -> None:
    text = yaml.safe_dump(tiny_spec(search_space={"name": "cnn1d", "choices": {"depht.*": [1]}}))
    (tmp_path / "spec").write_text(text)
    assert main(["run", str(tmp_path / "spec"), "--db", str(tmp_path / "nas.db")]) == 2
    cli = capsys.readouterr().err.strip().removeprefix(f"nas: error: {tmp_path / 'spec'}: ")
    http = error_of(client.post("/api/jobs", content=text), 422).removeprefix("spec: ")
    assert http == cli and "unknown dimension 'depht.*'" in http


def test_spec_importing_code_needs_the_allow_list(served: Served, client: TestClient) -> None:
    """A ``tensors`` dataset imports its source's module while the spec is validated, so the
    allow-list is checked first: a module that does not even exist is refused with 403, not
    imported (which would fail with 422)."""
    spec = tiny_spec(dataset={"name": "tensors", "source": "labdata.loaders:load"})
    before = job_count(client)
    response = client.post("/api/jobs", json=spec)
    assert "imports module 'labdata.loaders'" in error_of(response, 403)
    assert job_count(client) == before
    allowing = serve_allowing(served, ["labdata"])
    with TestClient(allowing, headers=AUTH) as other:
        assert "labdata" in error_of(other.post("/api/jobs", json=spec), 422)  # let through
        spec["dataset"]["source"] = "labdatax.evil:load"
        assert "allowed: labdata" in error_of(other.post("/api/jobs", json=spec), 403)


def serve_allowing(served: Served, modules: list[str]):
    from nas.service import create_app

    return create_app(served.url, TOKEN, modules, runner=served.runner)


def test_cancel(client: TestClient) -> None:
    job = client.post("/api/jobs", json=tiny_spec(name="to-cancel")).json()
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"
    assert "is cancelled; only a pending or running job" in error_of(
        client.post(f"/api/jobs/{job['id']}/cancel"), 409
    )


def test_finished_job_cannot_be_cancelled(served: Served, client: TestClient) -> None:
    assert "is done" in error_of(client.post(f"/api/jobs/{served.job.id}/cancel"), 409)


# -- running jobs ---------------------------------------------------------------------------------


def test_controller_stops_on_cancel(served: Served, tmp_path: Path) -> None:
    with Store(served.url) as store:
        job = store.create_job("cancelled", finished_spec())
        controller = Controller(store, job.id, tmp_path)

        def cancelled_while_running() -> None:  # in place of the first step: no Ray needed
            store.cancel_job(job.id)
            controller._enter("train")

        controller.check_feasible = cancelled_while_running  # type: ignore[method-assign]
        with pytest.raises(JobCancelled, match="was cancelled"):
            controller.run()
        assert store.get_job(job.id).status == "cancelled"


def test_process_runner(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs run one at a time as a child process; a child that fails before its controller
    could say why marks the job failed with its last line; a cancelled job is skipped."""
    with Store(served.url) as store:
        failing = store.create_job("failing", finished_spec()).id
        cancelled = store.create_job("cancelled", finished_spec()).id
        store.cancel_job(cancelled)
        runner = ProcessRunner(store, tmp_path)
        script = "import sys; print('starting'); print('cannot start Ray: boom'); sys.exit(2)"
        monkeypatch.setattr(runner, "command", lambda job_id: [sys.executable, "-c", script])
        assert "resume" in ProcessRunner.command(runner, failing)
        runner.start(cancelled)
        runner.start(failing)
        runner.close()
        assert store.get_job(failing).status == "failed"
        assert store.get_job(failing).error == "cannot start Ray: boom"
        assert store.get_job(cancelled).status == "cancelled"
        assert not (tmp_path / cancelled).exists()
        assert "starting" in (tmp_path / failing / "service.log").read_text()


def test_a_bug_is_still_a_json_error(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Store, "list_jobs", lambda self: 1 / 0)
    with TestClient(served.app, headers=AUTH, raise_server_exceptions=False) as client:
        assert error_of(client.get("/api/jobs"), 500) == "internal error: ZeroDivisionError"
