"""Distributed ``map build`` (issue 25): ``torchrun`` ranks embed disjoint shares of the scans and
rank 0 writes the map a single process writes, byte for byte."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from corridor_world import write_corridors
from tiny_runs import train_on_00

from liploc.runtime.process_group import shard_range

HERE = Path(__file__).resolve().parent
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize(
    ("total", "world", "multiple"), [(22, 2, 4), (22, 3, 4), (3, 2, 4), (0, 2, 4), (10, 4, 1)]
)
def test_shards_follow_each_other_at_whole_batches(total: int, world: int, multiple: int) -> None:
    ranges = [shard_range(total, rank, world, multiple) for rank in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    for (_, stop), (start, _) in itertools.pairwise(ranges):
        assert stop == start and (start % multiple == 0 or start == total)
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= multiple or 0 in sizes  # as even as whole batches allow


def test_shard_of_a_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard_range(10, 2, 2)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Corridor drives in one world (01 and 02: 22 scans) and a model trained on 00."""
    base = tmp_path_factory.mktemp("distributed")
    root = write_corridors(base / "town", ("00", 24, 1), ("01", 9, 2), ("02", 13, 3))
    (root / "synth.json").write_text(json.dumps({"pose_frame": "town"}))  # one world for 01 and 02
    return {"root": root, "run": train_on_00(root, base / "run", seed=0, steps=1, batch_size=8)}


def _map_args(town: dict[str, Path]) -> list[str]:
    args = [str(town["run"]), "--data-root", str(town["root"]), "--sequence", "01", "--sequence", "02"]
    return [*args, "--device", "cpu", "--no-onnx", "--batch-size", "4"]  # batches 0-2 rank 0, 3-5 rank 1


@pytest.mark.slow
def test_torchrun_map_build_writes_the_single_process_map(town: dict[str, Path], tmp_path: Path) -> None:
    args = _map_args(town)
    env = _environment()

    single = subprocess.run(
        [sys.executable, "-m", "liploc", "map", "build", *args, "--out", str(tmp_path / "single")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    record = tmp_path / "record"
    record.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ranks = subprocess.run(
        [*launch, str(HERE / "map_build_ranks.py"), str(record), "--", *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ranks.returncode == 0, ranks.stdout[-3000:] + ranks.stderr[-3000:]

    # Each rank embedded its own whole batches, together every scan once.
    shares = [json.loads((record / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [len(share) for share in shares] == [12, 10]
    assert shares[0] + shares[1] == [f"01/{i}" for i in range(9)] + [f"02/{i}" for i in range(13)]
    assert ranks.stdout.count("map of 22 scans") == 1  # rank 0 speaks for the job
    # Only rank 0, which writes the map, holds every rank's embeddings (at 1M scans: 1 GB).
    gathered = [json.loads((record / f"gathered-{rank}.json").read_text()) for rank in (0, 1)]
    assert gathered == [22, None]

    files = {p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file()}
    assert {Path("embeddings.npy"), Path("index.faiss"), Path("manifest.json")} <= files
    for name in sorted(files):  # the same map, byte for byte: embeddings, index, manifest, model
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record", "single", "two"]


@pytest.mark.slow
def test_a_failure_of_rank_0_ends_every_rank_with_its_reason(town: dict[str, Path], tmp_path: Path) -> None:
    # Rank 0 alone builds the index, so only rank 0 meets a memory bound the index cannot keep.
    args = [*_map_args(town), "--index", "flat", "--max-memory", "0.001", "--out", str(tmp_path / "m")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, "-m", "liploc", "map", "build", *args],
        env=_environment(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: a flat index over 22 embeddings" in output, output[-3000:]  # rank 0's reason
    assert "error: rank 0 did not write the map" in output, output[-3000:]  # rank 1 did not wait
    assert "liploc/" not in output  # no traceback of liploc's (only torchrun's own report)
    assert not (tmp_path / "m").exists()
