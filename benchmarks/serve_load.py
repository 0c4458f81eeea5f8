"""Load on `liploc serve`: requests/s and p50/p99 latency with 1 and 8 concurrent clients, beside
sequential `Localizer` calls, in one run.

A small synthetic map (one `liploc synth` drive, small sensor size) with the tiny model (trained a
few steps: the speed does not depend on how well it localizes) is served by a real
`liploc serve` process on 127.0.0.1. A fixed number of POST /localize requests (multipart PNG,
k=5) is sent by 1, then by 8 client threads, each with its own HTTP connection; every request must
answer 200. The baselines run in this process on the same images: sequential
`Localizer.localize([path])` calls (the Python API one image at a time), and the server's own
per-image work without HTTP or batching (encoder + search), for reference.

Goal: with 8 clients, at least 2x the sequential Localizer throughput, and p99 latency at most 3x
the one-client p50.

    python benchmarks/serve_load.py [--requests N] [--keep DIR]

Last line: {"sequential_rps": ..., "clients_1": {...}, "clients_8": {...}, "speedup_8": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from liploc.config import load_config
from liploc.datasets import load_image
from liploc.retrieval.localize import Localizer, build_map
from liploc.serving.engine import MapService
from liploc.synth import SynthOptions, generate_dataset
from liploc.training.train import train

REPO = Path(__file__).resolve().parents[1]
CLIENTS = (1, 8)


def make_map(work: Path) -> tuple[Path, list[Path]]:
    """Synthetic drives -> tiny model (a few steps) -> map of drive 00; and the query images."""
    summary = generate_dataset(
        work / "data", SynthOptions(town_seed=5, drives=2, frames=40, size="small", pairs="none")
    )
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"data.datasets=[{{root: '{summary.root}', train: ['00'], val: ['01']}}]",
            "train.max_steps=2",
            "train.batch_size=8",
        ],
    )
    train(cfg, work / "run", progress=False)
    build_map(work / "run", summary.root, ["00"], work / "map", device="cpu")
    images = sorted((Path(summary.root) / "sequences" / "01" / "image_2").glob("*.png"))
    return work / "map", images


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.array(latencies_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def sequential(call, images: list[Path], n: int) -> dict[str, float]:
    """``call(path)`` n times one after the other -> requests/s and latency percentiles."""
    call(images[0])  # warm-up
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call(images[i % len(images)])
        latencies.append(time.perf_counter() - t)
    return {"rps": n / (time.perf_counter() - start), **percentiles(latencies)}


def load(url: str, payloads: list[bytes], n: int, clients: int) -> dict[str, float]:
    """n POST /localize requests spread over ``clients`` threads, each with its own connection."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            http.get(url + "/health")  # open the connection before the clock starts
            barrier.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    res = http.post(
                        url + "/localize?k=5", files={"image": ("q.png", payloads[i % len(payloads)])}
                    )
                    ok = res.status_code == 200 and len(res.json()["matches"]) == 5
                    problem = None if ok else f"{res.status_code} {res.text[:200]}"
                except httpx.HTTPError as err:
                    problem = repr(err)
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        failures.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        print(f"  {len(failures)} failed requests, first: {failures[0]}")
    return {"rps": n / wall, **percentiles(latencies), "requests": n, "failed": len(failures)}


def start_server(map_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "liploc", "serve", str(map_dir), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit("liploc serve exited before answering")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("liploc serve did not come up within 120 s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="Requests per measurement.")
    parser.add_argument("--keep", type=Path, default=None, help="Build the map here and keep it.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liploc-serve-bench-") as tmp:
        work = args.keep or Path(tmp)
        print("building a small synthetic map (tiny model)...", flush=True)
        map_dir, images = make_map(work)
        payloads = [p.read_bytes() for p in images]
        n = args.requests

        localizer = Localizer.open(map_dir, device="cpu")
        seq = sequential(lambda p: localizer.localize([p], 5), images, n)
        service = MapService.open(map_dir, device="cpu")
        arrays = {p: load_image(p) for p in images}
        work_only = sequential(lambda p: service.localize([arrays[p]], 5), images, n)

        proc, url = start_server(map_dir)
        try:
            results = {c: load(url, payloads, n, c) for c in CLIENTS}
            batching = httpx.get(url + "/health").json()["batching"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    one, eight = results[1], results[8]
    speedup = eight["rps"] / seq["rps"]
    tail = eight["p99_ms"] / one["p50_ms"]
    print(
        f"{len(images)} query images of 310x94 px, map of 40 scans, tiny model, CPU, k=5, {n} requests each"
    )
    print(f"{'':34s}{'req/s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}")
    print(f"{'sequential Localizer.localize':34s}{seq['rps']:9.1f}{seq['p50_ms']:9.2f}{seq['p99_ms']:9.2f}")
    w = work_only
    print(f"{'  (server work, no HTTP, 1 image)':34s}{w['rps']:9.1f}{w['p50_ms']:9.2f}{w['p99_ms']:9.2f}")
    for c in CLIENTS:
        r = results[c]
        print(f"{f'liploc serve, {c} client(s)':34s}{r['rps']:9.1f}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}")
    print(f"batches: mean {batching['mean_batch_images']} images, largest {batching['largest_batch_images']}")
    failed = one["failed"] + eight["failed"]
    print(
        f"8 clients: {speedup:.2f}x sequential throughput "
        f"(goal >= 2x: {'met' if speedup >= 2 else 'NOT met'}); "
        f"p99 {tail:.2f}x the 1-client p50 (goal <= 3x: {'met' if tail <= 3 else 'NOT met'}); "
        f"failed requests: {failed}"
    )
    print(
        json.dumps(
            {
                "benchmark": "serve_load",
                "requests": n,
                "sequential_localizer": seq,
                "server_work_no_http": work_only,
                "clients_1": one,
                "clients_8": eight,
                "speedup_8_vs_sequential": speedup,
                "p99_8_over_p50_1": tail,
                "failed_requests": failed,
                "mean_batch_images": batching["mean_batch_images"],
                "goal_met": bool(speedup >= 2 and tail <= 3 and failed == 0),
            }
        )
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
