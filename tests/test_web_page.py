"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no
browser download): the jobs table, then a finished job's page, whose front plot must hold as
many points as the API returns; clicking a point offers the exports, and the pt2 it downloads
loads in torch.

Needs ``apt-get install chromium`` (see README); without it the test fails and says so.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import torch
import uvicorn

from nas.store import Store
from tests.finished_job import TOKEN, Served, serve_finished_job

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    directory = tmp_path_factory.mktemp("web")
    return serve_finished_job(f"sqlite:///{directory / 'nas.db'}", directory)


@pytest.fixture(scope="module")
def base_url(served: Served) -> Iterator[str]:
    """The app behind a real uvicorn server on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(served.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} not found: the web page test drives Debian's chromium; "
            "install it with `apt-get install -y chromium`",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_jobs_table_and_front_plot_download(
    served: Served, base_url: str, browser, tmp_path: Path
) -> None:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # the jobs table, with the token from the address (kept for the tab, then out of the URL)
    page.goto(f"{base_url}/#token={TOKEN}")
    row = page.locator("#jobs-table tbody tr", has_text=served.job.id)
    row.wait_for(timeout=20_000)
    assert "done" in row.inner_text()
    assert "token" not in page.url

    row.locator("a").click()
    page.wait_for_selector("#job[data-loaded='true']", timeout=30_000)
    assert page.inner_text("#job-status").startswith("done")

    front = httpx2.get(
        f"{base_url}/api/jobs/{served.job.id}/front", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    canvas = page.locator("canvas#front-objectives")
    assert canvas.is_visible()
    plotted = page.evaluate("window.nasCharts['front-objectives'].data.datasets[0].data.length")
    assert plotted == len(front["points"]) == len(served.job.front) > 1
    for chart_id in ("front-cpu", "hypervolume", "predictions-accuracy", "curves-1", "curves-2"):
        assert page.locator(f"canvas#{chart_id}").is_visible(), chart_id

    # hover a point: its config, measured and predicted values; click it: the exports
    index = len(front["points"]) // 2
    x, y = page.evaluate(
        "(i) => { const p = window.nasCharts['front-objectives'].getDatasetMeta(0).data[i];"
        " return [p.x, p.y]; }",
        index,
    )
    canvas.hover(position={"x": x, "y": y})
    tooltip = page.evaluate(
        "window.nasCharts['front-objectives'].tooltip.body.flatMap((b) => b.lines)"
    )
    point = front["points"][index]
    assert f"subnet {point['subnet']}" in tooltip
    assert any(line.startswith("config: ") for line in tooltip)
    canvas.click(position={"x": x, "y": y})
    panel = page.locator("#export")
    panel.wait_for(state="visible")
    assert panel.get_attribute("data-subnet") == str(point["subnet"])

    with page.expect_download(timeout=120_000) as download_info:
        panel.locator("button[data-format='pt2']").click()
    download = download_info.value
    assert download.suggested_filename == f"{served.job.id}-subnet{point['subnet']}.pt2"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    program = torch.export.load(saved).module()
    with Store(served.url) as store:
        from nas.export import load_subnet

        net, _ = load_subnet(store, served.job.id, point["subnet"])
    x_in = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(program(x_in), net(x_in))
    assert not errors, errors
    context.close()
