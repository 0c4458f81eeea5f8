"""The map page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Loads the page from a real server on 127.0.0.1, checks the trajectory drawing, uploads a synthetic
camera image through the file input, and checks that the top-k poses are drawn on the map, listed
with their scores, and that the retrieved scans' range images load. Under CI (conftest.under_ci) a missing
Chromium fails the test instead of skipping it: `.ci/run` installs it from Debian.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import skip_unless_ci
from map_world import MAP_FRAMES, map_world, query_image  # noqa: F401

from liploc.serving.app import create_app
from liploc.serving.engine import MapService

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    skip_unless_ci(f"{CHROMIUM} is missing: apt-get install chromium (the CI script installs it)")


@pytest.fixture(scope="module")
def server(map_world: dict[str, Path]):  # noqa: F811
    service = MapService.open(map_world["map"], device="cpu", data_root=map_world["root"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def page(tmp_path: Path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # A fresh profile each time; Playwright's own browser download is never used.
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _rects(page, selector: str) -> list[dict]:
    return page.locator(selector).evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {x: r.x, y: r.y, w: r.width, h: r.height}; })"
    )


def _overlapping(rects: list[dict]) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i, a in enumerate(rects)
        for j, b in enumerate(rects[i + 1 :], i + 1)
        if a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    ]


def test_page_draws_the_map_and_the_poses_of_an_uploaded_image(page, server, map_world, tmp_path) -> None:  # noqa: F811
    errors: list[str] = []
    failed: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("response", lambda res: failed.append(f"{res.status} {res.url}") if res.status >= 400 else None)
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    assert page.locator("#scans circle").count() == MAP_FRAMES
    fills = page.locator("#scans circle").evaluate_all("cs => cs.map(c => c.getAttribute('fill'))")
    assert fills[0] != fills[-1]  # coloured by frame order
    assert "30 scans" in page.locator("#map-summary").inner_text()
    # Drawn to scale: the viewBox spans the trajectory's extent in metres (30 m corridor + margins).
    width = float(page.locator("#trajectory").get_attribute("viewBox").split()[2])
    assert 29.0 < width < 40.0

    image = query_image(map_world["root"], 12)
    page.set_input_files("#image-input", str(image))
    page.wait_for_selector("#matches tbody tr", timeout=20000)
    expected = httpx.post(server + "/localize?k=5", files={"image": image.read_bytes()}).json()["matches"]
    rows = page.locator("#matches tbody tr")
    assert rows.count() == 5
    listed = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(5)]
    assert listed == [m["frame_id"] for m in expected]
    assert rows.nth(0).locator("td").nth(2).inner_text() == f"{expected[0]['score']:.3f}"
    markers = page.locator("#matches-layer .match-marker")
    assert markers.count() == 5
    drawn = sorted(markers.evaluate_all("ms => ms.map(m => m.dataset.frame)"))
    assert drawn == sorted(m["frame_id"] for m in expected)
    ranges = page.locator("#range-images img.range-image")
    assert ranges.count() == 5
    page.wait_for_function(
        "() => [...document.querySelectorAll('#range-images img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=20000,
    )
    assert page.locator("#query-image").evaluate("i => i.naturalWidth") == 128
    # The best pose's marker sits at its x: metres from the extent's minimum plus the 6 % margin.
    extent = httpx.get(server + "/map").json()["extent_m"]
    span = max(extent["x_max"] - extent["x_min"], extent["y_max"] - extent["y_min"], 1.0)
    cx = float(page.locator('#matches-layer .match-marker[data-rank="1"] circle').get_attribute("cx"))
    assert cx == pytest.approx(expected[0]["x"] - extent["x_min"] + 0.06 * span, abs=1e-3)
    # The top-5 of a corridor lie a metre or two apart: their labels are placed apart, not printed
    # over each other, and a label moved away from its marker has a line to it.
    labels = _rects(page, "#labels-layer .match-label")
    assert len(labels) == 5 and not _overlapping(labels), labels
    page.screenshot(path=str(tmp_path / "page.png"))
    assert not errors
    assert not failed, failed  # the favicon too: nothing the page asks for is missing

    # A bad upload shows the service's message and nothing of the previous answer.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    page.set_input_files("#image-input", str(bad))
    page.wait_for_selector("#status.error", timeout=20000)
    assert "not a PNG or JPEG" in page.locator("#status").inner_text()
    assert page.locator("#matches-layer *, #labels-layer *, #range-images *").count() == 0
    assert page.locator("#matches").is_hidden() and page.locator("#matches tbody tr").count() == 0
    page.wait_for_function("() => document.getElementById('query-figure').hidden", timeout=20000)
    assert page.locator("#query-image").is_hidden()  # no broken-image icon


def test_page_localizes_several_images_as_a_sequence_and_draws_the_path(page, server, map_world) -> None:  # noqa: F811
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    frames = [15, 12, 14, 13]  # chosen out of order: the page sends them in file-name order
    paths = [query_image(map_world["root"], f) for f in frames]
    page.fill("#travelled-input", "1,1,1")
    page.set_input_files("#image-input", [str(p) for p in paths])
    page.wait_for_selector("#sequence-path circle.path-step", timeout=20000)
    files = [("image", (p.name, p.read_bytes())) for p in sorted(paths)]
    expected = httpx.post(server + "/localize/sequence?k=5", files=files, data={"travelled": "1,1,1"}).json()
    rows = page.locator("#matches tbody tr")
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())] == [
        m["frame_id"] for m in expected["matches"]
    ]
    steps = page.locator("#sequence-path circle.path-step").evaluate_all("cs => cs.map(c => c.dataset.frame)")
    assert steps == [p["frame_id"] for p in expected["path"] if p["frame_id"] is not None]
    assert page.locator("#sequence-path polyline.path-line").count() == 1
    # The path is wide and long enough to be seen: nothing covers the middle of its first step,
    # it spans tens of pixels on the screen, and the best pose's marker is still on top of it.
    line = _rects(page, "#sequence-path polyline.path-line")[0]
    assert max(line["w"], line["h"]) >= 60, line
    covered = page.evaluate(
        """() => {
          const steps = [...document.querySelectorAll('#sequence-path circle.path-step')];
          const [a, b] = steps.slice(0, 2).map(c => c.getBoundingClientRect());
          const x = (a.x + a.width / 2 + b.x + b.width / 2) / 2;
          const y = (a.y + a.height / 2 + b.y + b.height / 2) / 2;
          const top = document.elementFromPoint(x, y);
          return top.closest('#sequence-path') ? null : top.outerHTML.slice(0, 120);
        }"""
    )
    assert covered is None, covered
    width = page.locator("#sequence-path polyline.path-line").evaluate(
        "p => p.getScreenCTM().a * parseFloat(p.getAttribute('stroke-width'))"
    )
    assert width >= 3, f"the path is {width:.1f} px wide"
    best = page.evaluate(
        """() => {
          const r = document.querySelector('.match-marker[data-rank="1"] circle').getBoundingClientRect();
          return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2).closest('.match-marker')
            ?.dataset.rank;
        }"""
    )
    assert best == "1"
    assert not _overlapping(_rects(page, "#labels-layer .match-label"))
    assert "the last of 4 images" in page.locator("#status").inner_text()
    assert "000015.png" in page.locator("#status").inner_text()

    # A bad distance shows the service's message (other files: choosing the same fires no change),
    # and the previous path and poses go.
    page.fill("#travelled-input", "1,far")
    page.set_input_files("#image-input", [str(query_image(map_world["root"], f)) for f in (20, 21, 22)])
    page.wait_for_selector("#status.error", timeout=20000)
    assert "not a number" in page.locator("#status").inner_text()
    assert page.locator("#path-layer *, #matches-layer *, #labels-layer *").count() == 0


@pytest.fixture()
def narrow_page(tmp_path: Path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 420, "height": 800},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_page_at_420_px_keeps_the_map_wide_and_the_legend_apart(narrow_page, server, map_world) -> None:  # noqa: F811
    page = narrow_page
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    svg = _rects(page, "#trajectory")[0]
    assert svg["w"] >= 380 and svg["h"] >= 250, svg  # was a strip of about 50 px
    legend = _rects(page, "#legend > *:not([hidden])")
    assert not _overlapping(legend), legend
    assert all(r["x"] >= 0 and r["x"] + r["w"] <= 420 for r in legend), legend
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 420  # nothing sideways
    page.set_input_files("#image-input", str(query_image(map_world["root"], 12)))
    page.wait_for_selector("#matches tbody tr", timeout=20000)
    assert not _overlapping(_rects(page, "#labels-layer .match-label"))


def test_api_docs_render_with_no_network(page, server) -> None:
    outside: list[str] = []

    def only_local(route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30000)
    text = page.locator(".swagger-ui").inner_text()
    assert "/localize/sequence" in text and "/localize/batch" in text
    assert not outside, outside
