"""`liploc serve`: the HTTP API over a small map (FastAPI's test client), and the real server process."""

from __future__ import annotations

import io
import os
import re
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
from fastapi.testclient import TestClient
from map_world import MAP_FRAMES, MAP_SEQUENCE, map_world, query_image  # noqa: F401
from PIL import Image

from liploc.errors import ModelMismatchError
from liploc.localization.localize import Localizer
from liploc.serving.app import create_app
from liploc.serving.engine import MapService
from liploc.serving.settings import ServeSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(map_world: dict[str, Path]) -> MapService:  # noqa: F811
    return MapService.open(map_world["map"], device="cpu", data_root=map_world["root"])


@pytest.fixture(scope="module")
def client(service: MapService):
    with TestClient(create_app(service)) as c:
        yield c


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def expected_matches(map_world: dict[str, Path], frames: list[int], k: int) -> list[list[tuple[str, float]]]:  # noqa: F811
    """(frame id, score) of the top-k of each query frame, from the Python API one image at a time."""
    loc = Localizer.open(map_world["map"], device="cpu")
    return [
        [(m.frame_id, m.score) for m in loc.localize([query_image(map_world["root"], f)], k)[0]]
        for f in frames
    ]


def expected_frames(map_world: dict[str, Path], frames: list[int], k: int) -> list[list[str]]:  # noqa: F811
    return [[f for f, _ in row] for row in expected_matches(map_world, frames, k)]


def same_matches(got: list[dict], expected: list[tuple[str, float]]) -> bool:
    """Same frames in the same order, scores equal to float32 rounding (batching changes nothing)."""
    return [m["frame_id"] for m in got] == [f for f, _ in expected] and all(
        abs(m["score"] - s) < 1e-5 for m, (_, s) in zip(got, expected, strict=True)
    )


def test_localize_multipart_and_raw_body_match_the_localizer(client, map_world, service) -> None:  # noqa: F811
    path = query_image(map_world["root"], 7)
    multipart = client.post("/localize", params={"k": 4}, files={"image": ("q.png", path.read_bytes())})
    raw = client.post("/localize?k=4", content=path.read_bytes(), headers={"content-type": "image/png"})
    assert multipart.status_code == 200 and raw.status_code == 200
    body = multipart.json()
    assert body["map"] == "map" and body["k"] == 4 and body["backend"] == "torch"
    assert body["model_fingerprint"] == service.lidar_map.model_fingerprint
    assert body["image"] == {"name": "q.png", "width": 128, "height": 40}
    assert body["time_ms"]["total"] >= body["time_ms"]["localize"] > 0
    frames = [m["frame_id"] for m in body["matches"]]
    assert frames == [m["frame_id"] for m in raw.json()["matches"]]
    assert frames == expected_frames(map_world, [7], 4)[0]
    scores = [m["score"] for m in body["matches"]]
    assert scores == sorted(scores, reverse=True) and [m["rank"] for m in body["matches"]] == [1, 2, 3, 4]
    for m in body["matches"]:
        pose = np.array(m["pose"])
        assert pose.shape == (4, 4)
        row = service.row_of(m["sequence"], m["frame"])
        np.testing.assert_allclose(pose, service.lidar_map.poses[row])
        assert (m["x"], m["y"]) == (pose[0, 3], pose[1, 3])
        assert m["yaw_rad"] == pytest.approx(np.arctan2(pose[1, 0], pose[0, 0]))
    # The default k is the settings' default.
    assert len(client.post("/localize", files={"image": path.read_bytes()}).json()["matches"]) == 5


def test_batch_endpoint_answers_each_image(client, map_world) -> None:  # noqa: F811
    frames = [2, 11, 25]
    files = [("images", (f"{f}.png", query_image(map_world["root"], f).read_bytes())) for f in frames]
    res = client.post("/localize/batch?k=3", files=files)
    assert res.status_code == 200
    results = res.json()["results"]
    assert [r["image"]["name"] for r in results] == ["2.png", "11.png", "25.png"]
    for r, expected in zip(results, expected_matches(map_world, frames, 3), strict=True):
        assert same_matches(r["matches"], expected)


def test_health_map_frames_and_docs(client, service) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["frames"] == MAP_FRAMES
    meta = client.get("/map").json()
    assert meta["frames"] == MAP_FRAMES and meta["sequences"][0] == {
        "name": MAP_SEQUENCE,
        "frames": MAP_FRAMES,
        "first": 0,
        "last": MAP_FRAMES - 1,
    }
    xy = service.lidar_map.xy
    assert meta["extent_m"]["x_max"] == pytest.approx(xy[:, 0].max())
    assert meta["model"]["fingerprint"] == service.lidar_map.model_fingerprint
    assert meta["created"].endswith("+00:00") and meta["range_images"] is True
    traj = client.get("/map/trajectory").json()
    assert len(traj["x"]) == MAP_FRAMES and traj["frame"][:3] == [0, 1, 2]
    frame = client.get(f"/map/frames/{MAP_SEQUENCE}/4").json()
    assert frame["frame_id"] == f"{MAP_SEQUENCE}/000004" and len(frame["pose"]) == 4
    png = client.get(f"/map/frames/{MAP_SEQUENCE}/4/range.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] > 0
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/localize", "/localize/batch", "/localize/sequence", "/health", "/map"} <= set(paths)
    form = paths["/localize/sequence"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == {"image", "travelled"}
    page = client.get("/")
    assert page.status_code == 200 and "/static/map.js" in page.text
    assert client.get("/static/map.js").status_code == 200


RNG = np.random.default_rng(0)
GOOD = RNG.integers(0, 255, size=(40, 64, 3), dtype=np.uint8)
GOOD_PNG = png_bytes(GOOD)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code", "words"),
    [
        (
            {"content": b"GIF89a not really", "headers": {"content-type": "image/png"}},
            415,
            "not_an_image",
            "PNG or JPEG",
        ),
        ({"files": {"image": ("a.txt", b"hello world")}}, 415, "not_an_image", "a.txt"),
        ({"files": {"image": ("a.gif", png_bytes(GOOD, "GIF"))}}, 415, "unsupported_image_format", "GIF"),
        ({"files": {"image": ("s.png", png_bytes(GOOD[:8, :8]))}}, 422, "image_too_small", "8x8"),
        ({"files": {"image": ("e.png", b"")}}, 400, "empty_image", "empty"),
        ({"files": {"image": ("t.png", GOOD_PNG[: len(GOOD_PNG) // 2])}}, 400, "corrupt_image", "truncated"),
        (
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n',
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "unknown_field",
            "'note'",
        ),
        ({"data": {"note": "no file"}}, 415, "unsupported_content_type", "x-www-form-urlencoded"),
        ({"files": [("image", GOOD_PNG), ("image", GOOD_PNG)]}, 400, "too_many_images", "/localize/batch"),
        (
            {"content": b"{}", "headers": {"content-type": "application/json"}},
            415,
            "unsupported_content_type",
            "json",
        ),
        ({"files": {"image": GOOD_PNG}, "params": {"k": 0}}, 422, "invalid_parameter", "k"),
        ({"files": {"image": GOOD_PNG}, "params": {"k": 101}}, 422, "invalid_parameter", "100"),
        ({"files": {"image": GOOD_PNG}, "params": {"k": "five"}}, 422, "invalid_parameter", "integer"),
    ],
)
def test_bad_localize_requests_get_a_json_4xx(client, request_kwargs, status, code, words) -> None:
    res = client.post("/localize", **request_kwargs)
    assert res.status_code == status, res.text
    body = res.json()
    assert body["error"] == code and words in body["detail"], body
    assert "Traceback" not in res.text


SEQUENCE_FRAMES = [12, 13, 14, 15, 16, 17]


def sequence_form(map_world: dict[str, Path], frames: list[int]) -> list[tuple[str, tuple[str, bytes]]]:  # noqa: F811
    """Multipart files of ``frames``' camera images, in this order, each as field ``image``."""
    return [("image", (f"{f}.png", query_image(map_world["root"], f).read_bytes())) for f in frames]


@pytest.mark.parametrize(
    ("frames", "travelled"),
    [
        (SEQUENCE_FRAMES, None),
        (SEQUENCE_FRAMES, [1.0, 1.0, 1.0, 1.0, 1.0]),
        (SEQUENCE_FRAMES[::-1], [0.5, 4.0, 0.0, 2.5, 1.0]),
        ([9], None),
    ],
)
def test_sequence_endpoint_answers_like_the_localizer(client, map_world, frames, travelled) -> None:  # noqa: F811
    data = {} if travelled is None else {"travelled": ",".join(str(d) for d in travelled)}
    res = client.post("/localize/sequence?k=4", files=sequence_form(map_world, frames), data=data)
    assert res.status_code == 200, res.text
    body = res.json()
    loc = Localizer.open(map_world["map"], device="cpu")
    paths = [query_image(map_world["root"], f) for f in frames]
    expected = loc.localize_sequence(paths, 4, travelled_m=travelled)
    assert body["k"] == 4 and body["travelled_m"] == travelled
    assert body["image"]["name"] == f"image {len(frames)} ({frames[-1]}.png)"
    assert [i["name"] for i in body["images"]] == [f"image {n} ({f}.png)" for n, f in enumerate(frames, 1)]
    # The last image's poses: the /localize shape, the Localizer's places and path scores.
    assert [m["frame_id"] for m in body["matches"]] == [m.frame_id for m in expected.matches]
    np.testing.assert_allclose(
        [m["score"] for m in body["matches"]], [m.score for m in expected.matches], atol=1e-5
    )
    assert [m["rank"] for m in body["matches"]] == [1, 2, 3, 4] and len(body["matches"][0]["pose"]) == 4
    # The path: one place per image, oldest first, with the image's own similarity to it.
    assert len(body["path"]) == len(frames)
    for step, image, m in zip(body["path"], body["images"], expected.path, strict=True):
        assert step["image"] == image["name"]
        if m is None:
            assert step["frame_id"] is None and step["similarity"] is None
            continue
        assert step["frame_id"] == m.frame_id and step["similarity"] == pytest.approx(m.score, abs=1e-5)
        assert (step["x"], step["y"]) == pytest.approx((m.pose[0, 3], m.pose[1, 3]))
        assert step["yaw_rad"] == pytest.approx(m.yaw)


@pytest.mark.parametrize(
    ("frames", "data", "status", "code", "words"),
    [
        (
            [1, 2, 3],
            {"travelled": "1.0"},
            422,
            "wrong_number_of_distances",
            "need 2 travelled distances",
        ),
        ([1, 2, 3], {"travelled": "1,1,1"}, 422, "wrong_number_of_distances", "got 3"),
        ([1, 2, 3], {"travelled": ""}, 422, "wrong_number_of_distances", "got 0"),
        ([1, 2, 3], {"travelled": "1.0,far"}, 422, "invalid_distance", "value 2 'far' is not a number"),
        ([1, 2, 3], {"travelled": "1.0,-2"}, 422, "invalid_distance", "finite and >= 0"),
        ([1, 2, 3], {"travelled": "nan,1"}, 422, "invalid_distance", "value 1"),
        ([1, 2], {"travel": "1.0"}, 400, "unknown_field", "'travel'"),
        ([], {"travelled": "1.0"}, 400, "no_image", "no image"),
        ([1, 2], {"k": "0"}, 422, "invalid_parameter", "k"),
    ],
)
def test_bad_sequence_requests_get_a_json_4xx(client, map_world, frames, data, status, code, words) -> None:  # noqa: F811
    data = dict(data)
    params = {"k": data.pop("k")} if "k" in data else {}
    files = sequence_form(map_world, frames) if frames else None
    if files is None:  # a multipart form with the text field alone
        res = client.post(
            "/localize/sequence",
            content=b'--b\r\nContent-Disposition: form-data; name="travelled"\r\n\r\n1.0\r\n--b--\r\n',
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    else:
        res = client.post("/localize/sequence", files=files, data=data, params=params)
    assert res.status_code == status, res.text
    body = res.json()
    assert body["error"] == code and words in body["detail"], body
    assert "Traceback" not in res.text


def test_a_bad_image_of_a_sequence_is_named_by_its_place(client, map_world) -> None:  # noqa: F811
    files = sequence_form(map_world, [1, 2, 3])
    files[1] = ("image", ("b.png", GOOD_PNG[: len(GOOD_PNG) // 2]))
    res = client.post("/localize/sequence", files=files)
    assert res.status_code == 400 and res.json()["error"] == "corrupt_image"
    assert res.json()["detail"].startswith("image 2 (b.png)")
    raw = client.post("/localize/sequence", content=GOOD_PNG, headers={"content-type": "image/png"})
    assert raw.status_code == 415 and raw.json()["error"] == "multipart_required"


def test_limits_are_settings(service, map_world) -> None:  # noqa: F811
    settings = ServeSettings(max_upload_bytes=4000, max_image_pixels=50 * 50, max_images_per_request=2)
    image = query_image(map_world["root"], 3).read_bytes()  # 128 x 40 = 5120 pixels, > 4000 bytes
    with TestClient(create_app(service, settings)) as c:
        res = c.post("/localize", files={"image": image})
        assert res.status_code == 413 and res.json()["error"] == "upload_too_large"
        assert "4000" in res.json()["detail"]

        # A streamed body without Content-Length is cut off at the limit too.
        def chunks():
            for _ in range(10):
                yield b"x" * 1000

        res = c.post("/localize", content=chunks(), headers={"content-type": "image/png"})
        assert res.status_code == 413 and res.json()["error"] == "upload_too_large"
        small = png_bytes(np.zeros((40, 64, 3), dtype=np.uint8))  # 2560 pixels, a few hundred bytes
        res = c.post("/localize", files={"image": small})
        assert res.status_code == 422 and res.json()["error"] == "image_too_large", res.text
        assert "2500" in res.json()["detail"]
        tiny = png_bytes(np.zeros((20, 20, 3), dtype=np.uint8))
        res = c.post("/localize/batch", files=[("images", tiny)] * 3)
        assert res.status_code == 413 and res.json()["error"] == "too_many_images"
    with TestClient(create_app(service, ServeSettings(max_sequence_images=3))) as c:
        res = c.post("/localize/sequence", files=sequence_form(map_world, [1, 2, 3, 4]))
        assert res.status_code == 413 and res.json()["error"] == "too_many_images"
        assert "more than 3 images" in res.json()["detail"] and "limit is 3" in res.json()["detail"]
        assert c.post("/localize/sequence", files=sequence_form(map_world, [1, 2, 3])).status_code == 200


def test_unknown_frames_and_missing_scans_are_404_json(client, service) -> None:
    for url in (f"/map/frames/{MAP_SEQUENCE}/999", "/map/frames/99/0/range.png"):
        res = client.get(url)
        assert res.status_code == 404 and res.json()["error"] == "unknown_frame"
        assert "has no frame" in res.json()["detail"]
    no_data = MapService(service.map_dir, service.lidar_map, service.encoder, service.projection)
    with TestClient(create_app(no_data)) as c:
        res = c.get(f"/map/frames/{MAP_SEQUENCE}/1/range.png")
        assert res.status_code == 404 and res.json()["error"] == "range_images_unavailable"
        assert c.get("/map").json()["range_images"] is False


def test_internal_failure_is_a_500_json_without_traceback(service, monkeypatch) -> None:
    app = create_app(service)

    def broken(images, k):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(service, "localize_prepared", broken)
    app = create_app(service)
    with TestClient(app, raise_server_exceptions=False) as c:
        res = c.post("/localize", files={"image": GOOD_PNG})
    assert res.status_code == 500
    assert res.json()["error"] == "internal_error" and "Traceback" not in res.text


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(service, map_world, monkeypatch) -> None:  # noqa: F811
    frames = list(range(0, MAP_FRAMES, 3))
    expected = dict(zip(frames, expected_matches(map_world, frames, 3), strict=True))
    answers: dict[int, list[dict]] = {}
    errors: list[str] = []
    # Happens-before, not timing: the first batch is held on the batch thread until every other
    # request has been queued behind it; then the queue must go out as one batch (the batcher
    # takes what is queued without waiting), whatever the machine's load.
    release, first_batch = threading.Event(), []
    real_batch = service.localize_prepared

    def held_first_batch(images, k):  # type: ignore[no-untyped-def]
        if not first_batch:
            first_batch.append(len(images))
            assert release.wait(120), "the other requests were never queued"
        return real_batch(images, k)

    monkeypatch.setattr(service, "localize_prepared", held_first_batch)
    settings = ServeSettings(max_wait_ms=200.0, max_batch=16)
    app = create_app(service, settings)
    with TestClient(app) as c:

        def one(frame: int) -> None:
            data = query_image(map_world["root"], frame).read_bytes()
            res = c.post("/localize?k=3", files={"image": data})
            if res.status_code != 200:
                errors.append(res.text)
                return
            answers[frame] = res.json()["matches"]

        threads = [threading.Thread(target=one, args=(f,)) for f in frames]
        for t in threads:
            t.start()
        queue = app.state.batcher._queue
        deadline = time.monotonic() + 120  # only bounds a failure; nothing here is timed
        try:
            while not (first_batch and queue.qsize() == len(frames) - first_batch[0]):
                assert time.monotonic() < deadline and not errors, (first_batch, queue.qsize(), errors)
                time.sleep(0.01)
        finally:
            release.set()
        for t in threads:
            t.join()
        stats = c.get("/health").json()["batching"]
    assert not errors
    assert sorted(answers) == frames
    for frame in frames:
        assert same_matches(answers[frame], expected[frame]), frame
    # Scores differ from image to image, so a mixed-up answer would be caught above.
    assert len({round(answers[f][0]["score"], 5) for f in frames}) > len(frames) // 2
    assert stats["requests"] == len(frames)
    # The held batch (which may already hold them all: it waits for requests still uploading),
    # then everything that queued behind it, in one batch.
    assert stats["batches"] == (1 if first_batch[0] == len(frames) else 2), (first_batch, stats)
    assert stats["largest_batch_images"] == max(first_batch[0], len(frames) - first_batch[0]) > 1, stats


def test_a_service_refuses_another_models_queries(map_world) -> None:  # noqa: F811
    with pytest.raises(ModelMismatchError, match="built with model"):
        MapService.open(map_world["map"], device="cpu", checkpoint=map_world["other_run"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("stop_signal", "backend"), [(signal.SIGTERM, "auto"), (signal.SIGINT, "torch")])
def test_serve_process_binds_localhost_answers_and_stops_cleanly(map_world, stop_signal, backend) -> None:  # noqa: F811
    """``serve`` starts on the map's ONNX export by default (auto, as ``localize``), on torch when asked."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liploc",
            "serve",
            str(map_world["map"]),
            "--port",
            str(port),
            "--device",
            "cpu",
            *(["--backend", backend] if backend != "auto" else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        image = query_image(map_world["root"], 5).read_bytes()
        res = httpx.post(f"http://127.0.0.1:{port}/localize", files={"image": image}, timeout=30)
        assert res.status_code == 200 and len(res.json()["matches"]) == 5
        assert res.json()["backend"] == ("onnx" if backend == "auto" else "torch")
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"listening on http://127.0.0.1:{port} (localhost only" in out
    assert "stopped" in out and "Traceback" not in out


def test_batcher_waits_only_for_announced_requests_and_only_so_long() -> None:
    import asyncio

    from liploc.serving.batching import MicroBatcher

    calls: list[int] = []

    def run_batch(images, k):
        calls.append(len(images))
        return [[] for _ in images]

    async def scenario() -> None:
        batcher = MicroBatcher(run_batch, max_batch=8, max_wait_s=30.0)
        await batcher.start()
        try:
            # Nobody else announced: answered at once, not after the 30 s wait.
            await asyncio.wait_for(batcher.submit([GOOD], 1), timeout=5)
            # One request still decoding: the batch waits for it, so both go in one call.
            with batcher.announce():
                first = asyncio.create_task(batcher.submit([GOOD], 1))
                await asyncio.sleep(0.2)
            second = asyncio.create_task(batcher.submit([GOOD, GOOD], 1))
            await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert calls == [1, 3]


# --- what a new user trips over (issue 24) and memory a request can take (issue 26) -----------------
def test_too_many_images_is_413_naming_the_option_whatever_the_count(service, map_world) -> None:  # noqa: F811
    tiny = png_bytes(np.zeros((20, 20, 3), dtype=np.uint8))
    settings = ServeSettings(max_images_per_request=2, max_sequence_images=3)
    with TestClient(create_app(service, settings)) as c:
        for count in (3, 4, 40):  # one over the limit, and past starlette's own file count limit
            res = c.post("/localize/batch", files=[("images", tiny)] * count)
            assert res.status_code == 413, (count, res.text)
            assert res.json()["error"] == "too_many_images"
            assert "--max-images-per-request" in res.json()["detail"] and "limit is 2" in res.json()["detail"]
        for count in (4, 5, 40):
            res = c.post("/localize/sequence", files=sequence_form(map_world, [1] * count))
            assert res.status_code == 413 and res.json()["error"] == "too_many_images", (count, res.text)
            assert "--max-sequence-images" in res.json()["detail"]
        for count in (2, 3, 40):
            res = c.post("/localize", files=[("image", tiny)] * count)
            assert res.status_code == 400 and res.json()["error"] == "too_many_images", (count, res.text)
            assert "/localize/batch" in res.json()["detail"]


@pytest.mark.parametrize(
    ("url", "files", "data", "words"),
    [
        ("/localize", [("file", GOOD_PNG)], {}, "'file'"),
        ("/localize", [("foo", GOOD_PNG)], {}, "'foo'"),
        ("/localize", [("image", GOOD_PNG)], {"note": "hi"}, "'note'"),
        ("/localize/batch", [("image", GOOD_PNG)], {}, "'images'"),
        ("/localize/batch", [("images", GOOD_PNG), ("extra", GOOD_PNG)], {}, "'extra'"),
        ("/localize/sequence", [("frames", GOOD_PNG)], {}, "'frames'"),
    ],
)
def test_unknown_form_fields_are_a_400_that_names_the_right_one(client, url, files, data, words) -> None:
    res = client.post(url, files=files, data=data)
    assert res.status_code == 400, res.text
    assert res.json()["error"] == "unknown_field" and words in res.json()["detail"], res.json()


def test_a_text_field_where_the_image_should_be_says_so(client) -> None:
    res = client.post("/localize", files={"image": (None, "query.png")})  # a text part, not a file
    assert res.status_code == 400 and res.json()["error"] == "not_a_file", res.text
    assert "image=@" in res.json()["detail"]


def test_k_answered_is_the_number_of_poses_returned(client, map_world) -> None:  # noqa: F811
    image = query_image(map_world["root"], 4).read_bytes()
    body = client.post("/localize?k=40", files={"image": image}).json()
    assert len(body["matches"]) == MAP_FRAMES and body["k"] == MAP_FRAMES and body["k_requested"] == 40
    body = client.post("/localize?k=3", files={"image": image}).json()
    assert body["k"] == body["k_requested"] == 3 and len(body["matches"]) == 3
    body = client.post("/localize/batch?k=99", files=[("images", image)] * 2).json()
    assert body["k"] == MAP_FRAMES and body["k_requested"] == 99
    assert all(len(r["matches"]) == MAP_FRAMES for r in body["results"])
    body = client.post("/localize/sequence?k=50", files=sequence_form(map_world, [3, 4])).json()
    assert body["k"] == len(body["matches"]) == MAP_FRAMES and body["k_requested"] == 50


def test_favicon_and_docs_need_nothing_from_outside(client) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200, page
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert assets and not [a for a in assets if "//" in a], (page, assets)  # no CDN
        for asset in assets:
            res = client.get(asset)
            assert res.status_code == 200 and len(res.content) > 100, asset


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_a_request_of_many_large_images_is_413_before_any_is_decoded(service) -> None:
    settings = ServeSettings()
    big = _png_header(7000, 7000)  # 49 Mpx: under the per-image limit, 147 MB once decoded
    with TestClient(create_app(service, settings)) as c:
        for url, field in (("/localize/sequence", "image"), ("/localize/batch", "images")):
            res = c.post(url, files=[(field, (f"{i}.png", big)) for i in range(16)])
            assert res.status_code == 413, res.text
            body = res.json()
            assert body["error"] == "too_many_pixels" and "--max-request-megapixels" in body["detail"]
            assert "16 images" in body["detail"], body
        res = c.post("/localize", files={"image": _png_header(9000, 9000)})
        assert res.status_code == 422 and res.json()["error"] == "image_too_large"


def test_a_sequence_is_decoded_and_shrunk_one_image_at_a_time(service) -> None:
    import tracemalloc

    frame = png_bytes(np.zeros((1500, 2000, 3), dtype=np.uint8))  # 9 MB of pixels, 9 kB of PNG
    decoded = 1500 * 2000 * 3
    one = 5 * decoded  # its pixels, and the float32 copy the resize to the network's input makes
    with TestClient(create_app(service)) as c:
        tracemalloc.start()
        try:
            res = c.post("/localize/sequence", files=[("image", (f"{i}.png", frame)) for i in range(8)])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert res.status_code == 200, res.text
    # All eight kept until the last is decoded: 72 MB, plus the one being resized (109 MB before);
    # one at a time: one image and its copies.
    assert peak < 1.5 * one, f"peak {peak / 1e6:.0f} MB for 8 images of {decoded / 1e6:.0f} MB"
