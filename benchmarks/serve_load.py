"""Load on `liploc serve`: requests/s and p50/p99 latency with 1 and 8 concurrent clients, beside
sequential `Localizer` calls, in one run.

A small synthetic map (one `liploc synth` drive, small sensor size) with the tiny model (trained a
few steps: the speed does not depend on how well it localizes) is served by a real
`liploc serve` process on 127.0.0.1 with its default settings. A fixed number of POST /localize
requests (multipart PNG, k=5; the synthetic drive's camera images, 310 x 94 px, ~50 KB each) is
sent by 1, then by 8 clients, each with its own keep-alive HTTP/1.1 connection; every answer must
be a 200 with 5 matches. The clients are threads of this process writing prebuilt requests to a
socket and reading the answers (as wrk or ab do), so that the load generator takes little of the
CPU the server needs; their CPU time is measured and printed, with the server's and that of
everything else on the machine during each measurement.

The baseline is the same job one request at a time in this process: `Localizer.localize([path])`
of the same PNG files (decode, resize, forward, search), with torch's default threads and with one
thread; the faster of the two is the one compared. The server's own per-image work without HTTP
or batching is printed for reference. Each figure is the median of ``--rounds`` rounds, the rows
interleaved so that a burst of other load does not fall on one row only.

Goal: with 8 clients, at least 2x the sequential Localizer throughput, and p99 latency at most 3x
the one-client p50.

What bounds it on 2 cores (figures of a quiet run): a request costs the server ~2.6 ms of CPU
(PNG decode ~0.9, HTTP/multipart/JSON in the event loop ~0.7, the forward pass ~0.45 per image in
batches of 8, resize, search) and the clients ~0.15, so two cores serve at most ~730 req/s with
no idle moment: 2x a ~365 req/s baseline needs every cycle of both. With 8 clients in a closed
loop the mean latency is 8 / throughput, so a p99 within 3x of the one-client p50 (4.2 ms), with
p99 ~1.3x the mean, needs ~825 req/s: above that ceiling. Only the forward pass gets cheaper per
image in a batch; a larger model or a GPU moves both goals within reach, more cores too.

    python benchmarks/serve_load.py [--requests N] [--rounds R] [--keep DIR] [--format jpeg]

``--format jpeg`` sends the same images as JPEG (quality 95, as a camera would; the baseline
decodes the same JPEG files): the decode then costs ~0.1 ms instead of ~0.9.

Last line: {"sequential_localizer": {...}, "clients_1": {...}, "clients_8": {...},
"speedup_8_vs_sequential": ..., "p99_8_over_p50_1": ..., ...}
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
import torch
from PIL import Image

from liploc.config import load_config
from liploc.datasets import load_image
from liploc.localization.localize import Localizer, build_map
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


def as_jpeg(images: list[Path], folder: Path) -> list[Path]:
    """The images saved as JPEG (quality 95) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in images:
        target = folder / f"{path.stem}.jpg"
        with Image.open(path) as image:
            image.convert("RGB").save(target, format="JPEG", quality=95)
        out.append(target)
    return out


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.array(latencies_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def sequential(call, images: list[Path], n: int) -> dict[str, float]:
    """``call(path)`` n times one after the other -> requests/s and latency percentiles."""
    call(images[0])  # warm-up
    latencies = []
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call(images[i % len(images)])
        latencies.append(time.perf_counter() - t)
    return {
        "rps": n / (time.perf_counter() - start),
        **percentiles(latencies),
        "cpu_ms_per_request": 1000 * (time.process_time() - cpu0) / n,
    }


BOUNDARY = "liploc-serve-load-boundary"


def multipart_request(port: int, image: bytes, fmt: str = "png", k: int = 5) -> bytes:
    """The bytes of one POST /localize?k=... HTTP/1.1 request with ``image`` as file field ``image``."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q.{fmt}"\r\n'
            f"Content-Type: image/{fmt}\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /localize?k={k} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends prebuilt requests and reads whole answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one request (the server answers with a Content-Length)."""
        self.sock.sendall(request)
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, self.reader.read(length)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def load(port: int, server_pid: int, requests: list[bytes], n: int, clients: int) -> dict[str, float]:
    """n POST /localize requests spread over ``clients`` threads, each with its own connection;
    requests/s, latency percentiles, failures and the CPU milliseconds per request of the clients,
    the server and everything else on the machine."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        conn = Connection(port)
        try:
            barrier.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    status, body = conn.send(requests[i % len(requests)])
                    elapsed = time.perf_counter() - t
                    ok = status == 200 and len(json.loads(body)["matches"]) == 5
                    problem = None if ok else f"{status} {body[:200]!r}"
                except (OSError, ValueError, KeyError) as err:
                    elapsed, problem = time.perf_counter() - t, repr(err)
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        failures.append(problem)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    cpu0, server0, busy0 = time.process_time(), cpu_seconds(server_pid), machine_busy_seconds()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    server_cpu = cpu_seconds(server_pid) - server0
    others = max(0.0, machine_busy_seconds() - busy0 - client_cpu - server_cpu)
    if failures:
        print(f"  {len(failures)} failed requests, first: {failures[0]}")
    return {
        "rps": n / wall,
        **percentiles(latencies),
        "requests": n,
        "failed": len(failures),
        "client_cpu_ms_per_request": 1000 * client_cpu / n,
        "server_cpu_ms_per_request": 1000 * server_cpu / n,
        "other_cpu_ms_per_request": 1000 * others / n,
    }


def batch_counts(port: int) -> tuple[int, int]:
    """(images, batches) the server has embedded so far, from /health."""
    stats = httpx.get(f"http://127.0.0.1:{port}/health").json()["batching"]
    return stats["images"], stats["batches"]


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (failures: their sum)."""
    out = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
    if "failed" in out:
        out["failed"] = int(sum(r["failed"] for r in rounds))
        out["requests"] = int(sum(r["requests"] for r in rounds))
    return out


def start_server(map_dir: Path) -> tuple[subprocess.Popen, int]:
    """`liploc serve MAP` on a free port of 127.0.0.1 with its default settings, once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    paths = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-m", "liploc", "serve", str(map_dir), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(
                f"liploc serve exited before answering:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("liploc serve did not come up within 120 s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="Requests per measurement and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; each figure is their median.")
    parser.add_argument("--keep", type=Path, default=None, help="Build the map here and keep it (reused).")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="Format of the queries.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liploc-serve-bench-") as tmp:
        work = args.keep or Path(tmp)
        if (work / "map").is_dir() and args.keep:
            print(f"reusing the map in {work}", flush=True)
            map_dir = work / "map"
            images = sorted(work.glob("data/**/sequences/01/image_2/*.png"))
        else:
            print("building a small synthetic map (tiny model)...", flush=True)
            map_dir, images = make_map(work)
        n = args.requests
        if args.format == "jpeg":
            images = as_jpeg(images, work / "jpeg")
        with Image.open(images[0]) as first:
            width, height = first.size
        payload_kb = np.mean([p.stat().st_size for p in images]) / 1024

        localizer = Localizer.open(map_dir, device="cpu")
        service = MapService.open(map_dir, device="cpu")
        arrays = {p: load_image(p) for p in images}
        default_threads = torch.get_num_threads()
        proc, port = start_server(map_dir)
        try:
            banner = _server_banner(port)
            requests = [multipart_request(port, p.read_bytes(), args.format) for p in images]
            rounds: dict[str, list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for threads in sorted({default_threads, 1}, reverse=True):
                    torch.set_num_threads(threads)
                    row = rounds.setdefault(f"seq_{threads}", [])
                    row.append(sequential(lambda p: localizer.localize([p], 5), images, n))
                torch.set_num_threads(default_threads)
                rounds.setdefault("work", []).append(
                    sequential(lambda p: service.localize([arrays[p]], 5), images, n)
                )
                for c in CLIENTS:
                    load(port, proc.pid, requests, 4 * c, c)  # warm-up: connections, first batches
                    before = batch_counts(port)
                    row = load(port, proc.pid, requests, n, c)
                    embedded, batches = (a - b for a, b in zip(batch_counts(port), before, strict=True))
                    row["mean_batch_images"] = embedded / max(batches, 1)
                    rounds.setdefault(f"clients_{c}", []).append(row)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    figures = {name: median_of(r) for name, r in rounds.items()}
    seq_rows = {int(name[4:]): f for name, f in figures.items() if name.startswith("seq_")}
    best_threads = max(seq_rows, key=lambda t: seq_rows[t]["rps"])
    seq = seq_rows[best_threads]
    one, eight = figures["clients_1"], figures["clients_8"]
    speedup = eight["rps"] / seq["rps"]
    tail = eight["p99_ms"] / one["p50_ms"]
    failed = one["failed"] + eight["failed"]

    print(
        f"{len(images)} query {args.format.upper()}s of {width}x{height} px ({payload_kb:.0f} KB), map of "
        f"{len(localizer.lidar_map)} scans, tiny model, CPU ({usable_cores()} cores), k=5; "
        f"{n} requests per row and round, median of {args.rounds} rounds"
    )
    print(f"server: {banner}")
    print(f"{'':40s}{'req/s':>8s}{'p50 ms':>8s}{'p99 ms':>8s}   CPU ms/request: clients, server, others")
    for threads, f in sorted(seq_rows.items(), reverse=True):
        mark = " <- baseline" if threads == best_threads else ""
        name = f"sequential Localizer.localize, {threads} thr"
        cpu = f"   CPU {f['cpu_ms_per_request']:.2f} ms/request"
        print(f"{name:40s}{f['rps']:8.1f}{f['p50_ms']:8.2f}{f['p99_ms']:8.2f}{cpu}{mark}")
    w = figures["work"]
    print(f"{'  (server work, no HTTP, 1 image)':40s}{w['rps']:8.1f}{w['p50_ms']:8.2f}{w['p99_ms']:8.2f}")
    for c in CLIENTS:
        r = figures[f"clients_{c}"]
        print(
            f"{f'liploc serve, {c} client(s)':40s}{r['rps']:8.1f}{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}"
            f"   {r['client_cpu_ms_per_request']:.2f}, {r['server_cpu_ms_per_request']:.2f}, "
            f"{r['other_cpu_ms_per_request']:.2f}"
        )
    print(
        f"images per forward pass: {one['mean_batch_images']:.1f} with 1 client, "
        f"{eight['mean_batch_images']:.1f} with 8"
    )
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
                "rounds": args.rounds,
                "image_px": [width, height],
                "format": args.format,
                "cores": usable_cores(),
                "server": banner,
                "sequential_localizer": {**seq, "torch_threads": best_threads},
                "sequential_by_threads": {str(t): f for t, f in seq_rows.items()},
                "server_work_no_http": w,
                "clients_1": one,
                "clients_8": eight,
                "speedup_8_vs_sequential": speedup,
                "p99_8_over_p50_1": tail,
                "failed_requests": failed,
                "goal_met": bool(speedup >= 2 and tail <= 3 and failed == 0),
            }
        )
    )
    if failed:
        raise SystemExit(1)


def usable_cores() -> int:
    """Cores this process may run on (its affinity: taskset, a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _server_banner(port: int) -> str:
    """The server's batching and thread settings, as its /map reports them."""
    limits = httpx.get(f"http://127.0.0.1:{port}/map").json()["limits"]
    names = ("max_batch", "max_wait_ms", "network_threads", "decode_threads")
    return ", ".join(f"{name} {limits.get(name, '-')}" for name in names)


if __name__ == "__main__":
    main()
