"""``liploc serve`` reloads its map (issue 25): ``POST /reload`` and SIGHUP swap in the map folder as
it is now (after ``liploc map add``) without dropping requests; a map that does not load leaves the
old one served."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from corridor_world import write_map_town
from fastapi.testclient import TestClient
from tiny_runs import train_on_00

from liploc.localization.localize import build_map
from liploc.localization.map_growth import add_to_map
from liploc.serving.app import create_app
from liploc.serving.engine import MapService
from liploc.serving.settings import ServeSettings

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Corridor drives of one world, a model, and a map of drive 02 (8 scans) to copy."""
    base = tmp_path_factory.mktemp("reload")
    root = write_map_town(base / "town")
    run = train_on_00(root, base / "run", seed=0, steps=1, batch_size=8)
    build_map(run, root, ["02"], base / "map", device="cpu", onnx=False)
    return {"root": root, "map": base / "map"}


@pytest.fixture
def map_dir(town: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(town["map"], tmp_path / "map"))


def image_of(town: dict[str, Path], sequence: str, frame: int) -> bytes:
    return (town["root"] / "sequences" / sequence / "image_2" / f"{frame:06d}.png").read_bytes()


def test_reload_endpoint_serves_a_drive_added_to_the_map(town: dict[str, Path], map_dir: Path) -> None:
    with TestClient(create_app(MapService.open(map_dir, device="cpu"))) as c:
        assert c.get("/health").json()["frames"] == 8
        before = c.post("/localize?k=20", files={"image": image_of(town, "01", 2)}).json()
        add_to_map(map_dir, town["root"], ["01"], device="cpu")
        assert c.get("/health").json()["frames"] == 8  # nothing changes until asked

        res = c.post("/reload")
        assert res.status_code == 200, res.text
        done = res.json()
        assert (done["status"], done["frames"], done["previous_frames"]) == ("reloaded", 14, 8)
        assert done["sequences"] == ["01", "02"] and done["generation"] == 1 and done["load_s"] >= 0
        health = c.get("/health").json()
        assert health["frames"] == 14 and health["map_loads"]["reloads"] == 1
        assert len(c.get("/map/trajectory").json()["x"]) == 14
        assert c.get("/map").json()["frames"] == 14
        assert c.get("/map/frames/01/2").status_code == 200
        after = c.post("/localize?k=20", files={"image": image_of(town, "01", 2)}).json()
    assert (before["frames"], after["frames"]) == (8, 14)
    assert {m["sequence"] for m in before["matches"]} == {"02"} and len(before["matches"]) == 8
    assert {m["sequence"] for m in after["matches"]} == {"01", "02"} and len(after["matches"]) == 14


def test_a_request_in_flight_during_a_reload_finishes_on_the_old_map(
    town: dict[str, Path], map_dir: Path
) -> None:
    # Happens-before, not timing: the first request is held in its decoding (the old encoder's
    # prepare) until the reload has swapped the map and a second request has been answered.
    service = MapService.open(map_dir, device="cpu")
    held, release = threading.Event(), threading.Event()
    real_prepare = service.encoder.prepare

    def held_prepare(image: np.ndarray) -> np.ndarray:
        held.set()
        assert release.wait(120), "the reload never finished"
        return real_prepare(image)

    service.encoder.prepare = held_prepare  # type: ignore[method-assign]  # this service's only
    answers: dict[str, httpx.Response] = {}
    with TestClient(create_app(service, ServeSettings(decode_threads=2))) as c:

        def first() -> None:
            answers["first"] = c.post("/localize?k=20", files={"image": image_of(town, "01", 2)})

        thread = threading.Thread(target=first)
        thread.start()
        try:
            assert held.wait(120), "the first request never reached its decoding"
            add_to_map(map_dir, town["root"], ["01"], device="cpu")
            assert c.post("/reload").json()["frames"] == 14
            answers["second"] = c.post("/localize?k=20", files={"image": image_of(town, "01", 2)})
            assert not answers.get("first"), "the first request was answered before it was released"
        finally:
            release.set()
            thread.join(120)
    first_answer, second_answer = answers["first"], answers["second"]
    assert first_answer.status_code == 200, first_answer.text  # in flight across the reload
    assert first_answer.json()["frames"] == 8 and len(first_answer.json()["matches"]) == 8
    assert {m["sequence"] for m in first_answer.json()["matches"]} == {"02"}
    assert second_answer.status_code == 200 and second_answer.json()["frames"] == 14


def test_a_map_that_does_not_load_on_reload_leaves_the_old_one_served(
    town: dict[str, Path], map_dir: Path
) -> None:
    with TestClient(create_app(MapService.open(map_dir, device="cpu"))) as c:
        expected = c.post("/localize?k=3", files={"image": image_of(town, "02", 4)}).json()["matches"]
        embeddings = map_dir / "embeddings.npy"
        damaged = bytearray(embeddings.read_bytes())
        damaged[-4:] = b"\x00\x00\xc0\x7f"  # a NaN where a float was
        embeddings.unlink()  # a new file, as a writer's rename would leave (the served one is mapped)
        embeddings.write_bytes(bytes(damaged))

        res = c.post("/reload")
        assert res.status_code == 409, res.text
        assert res.json()["error"] == "reload_failed"
        detail = res.json()["detail"]
        assert "embeddings.npy" in detail and "checksum does not match" in detail, detail
        assert "still serving the previous map (8 scans)" in detail, detail
        health = c.get("/health").json()
        assert health["frames"] == 8
        assert health["map_loads"] == {**health["map_loads"], "reloads": 0, "failed_reloads": 1}
        assert health["map_loads"]["last_reload_error"] == detail
        again = c.post("/localize?k=3", files={"image": image_of(town, "02", 4)})
    assert again.status_code == 200 and again.json()["matches"] == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_reloads_on_sighup(town: dict[str, Path], map_dir: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "liploc", "serve", str(map_dir), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    health = f"http://127.0.0.1:{port}/health"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.get(health).json()["frames"] == 8
        add_to_map(map_dir, town["root"], ["01"], device="cpu")
        proc.send_signal(signal.SIGHUP)
        while httpx.get(health, timeout=5).json()["frames"] != 14:
            assert proc.poll() is None and time.monotonic() < deadline + 60, "no reload after SIGHUP"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "reloaded map map: 14 scans (was 8)" in out and "Traceback" not in out, out


def test_one_batch_never_mixes_requests_of_two_maps() -> None:
    import asyncio

    from liploc.serving.batching import MicroBatcher

    calls: list[tuple[str, int]] = []

    def runner(name: str):  # type: ignore[no-untyped-def]
        def run_batch(images, k):  # type: ignore[no-untyped-def]
            calls.append((name, len(images)))
            return [[] for _ in images]

        return run_batch

    old, new = runner("old"), runner("new")
    image = np.zeros((4, 4, 3), dtype=np.uint8)

    async def scenario() -> None:
        batcher = MicroBatcher(old, max_batch=8, max_wait_s=0.5)
        await batcher.start()
        try:
            with batcher.announce():  # the batch waits for more: all three are queued together
                a = asyncio.create_task(batcher.submit([image], 1))
                b = asyncio.create_task(batcher.submit([image, image], 1, new))
                c = asyncio.create_task(batcher.submit([image], 1, new))
                await asyncio.sleep(0.2)
            await asyncio.wait_for(asyncio.gather(a, b, c), timeout=10)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert calls == [("old", 1), ("new", 3)]
