"""Maps that grow (issue 25): a drive appended atomically, with the map's model; drives of another
world, model, preprocessing or precision, and drives already in the map, are refused."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from corridor_world import write_corridors, write_map_town
from state_observer import observe_file_changes
from tiny_runs import train_on_00

from liploc.errors import ConfigError, ModelMismatchError
from liploc.localization.index import IVF_PQ_MIN_SIZE, l2_normalize
from liploc.localization.lidar_map import LidarMap
from liploc.localization.localize import build_map
from liploc.localization.map_growth import add_to_map

MODEL = {"embed_dim": 16}


def entries(n: int, seq: str, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :2, 3] = rng.uniform(0, 100, (n, 2))
    return l2_normalize(rng.normal(size=(n, 16))), poses, [(seq, i) for i in range(n)]


@pytest.mark.parametrize("kind", ["flat", "flat-fp16"])
def test_appending_to_an_exhaustive_map_is_building_the_whole(kind: str) -> None:
    a, b = entries(40, "00", 0), entries(15, "01", 1)
    old = LidarMap.build(*a, "fp", MODEL, index_kind=kind, world="w", preprocessing="p")
    grown = old.appended(*b)
    whole = LidarMap.build(
        np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), a[2] + b[2], "fp", MODEL, index_kind=kind
    )
    assert len(old) == 40 and len(grown) == 55
    assert (grown.world, grown.preprocessing, grown.index.kind) == ("w", "p", kind)
    assert grown.sequences[39:41] == ["00", "01"] and grown.frame_indices[40] == 0
    np.testing.assert_array_equal(grown.poses, whole.poses)
    same = faiss.serialize_index(grown.index.faiss_index) == faiss.serialize_index(whole.index.faiss_index)
    assert np.all(same)


def test_appending_to_an_ivf_pq_map_adds_to_its_trained_index() -> None:
    a, b = entries(IVF_PQ_MIN_SIZE, "00", 0), entries(100, "01", 1)
    old = LidarMap.build(*a, "fp", MODEL, index_kind="ivf-pq")
    grown = old.appended(*b)
    assert grown.index.kind == "ivf-pq" and grown.index.ntotal == IVF_PQ_MIN_SIZE + 100
    assert old.index.ntotal == IVF_PQ_MIN_SIZE  # the old map is unchanged
    scores, ids = grown.search(b[0][:20], 3, query_fingerprint="fp")
    assert ids[:, 0].tolist() == list(range(IVF_PQ_MIN_SIZE, IVF_PQ_MIN_SIZE + 20))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Corridor drives in one shared world (a synth manifest says so), a model, and another."""
    root = write_map_town(tmp_path_factory.mktemp("town"))
    runs = tmp_path_factory.mktemp("runs")
    return {
        "root": root,
        "run": train_on_00(root, runs / "a", seed=0, steps=1, batch_size=8),
        "other": train_on_00(root, runs / "b", seed=1, steps=1, batch_size=8),
    }


def test_map_add_appends_a_drive_atomically(town: dict[str, Path], tmp_path: Path) -> None:
    map_dir = tmp_path / "m"
    built = build_map(town["run"], town["root"], ["02"], map_dir, device="cpu", onnx=False)
    assert built.world is not None and built.world.endswith(":town frame (synth.json)")
    loads: list[int] = []

    def check(event: str) -> None:
        loads.append(len(LidarMap.load(map_dir)))  # every checksum, the index against the embeddings

    with observe_file_changes(check) as events:
        grown = add_to_map(map_dir, town["root"], ["01"], device="cpu")
    assert len(events) >= 2 and set(loads) == {8, 14} and loads[-1] == 14  # never part of a drive
    loaded = LidarMap.load(map_dir)
    assert loaded.sequences == ["02"] * 8 + ["01"] * 6 and loaded.frame_indices[8:].tolist() == list(range(6))
    assert (loaded.world, loaded.preprocessing) == (built.world, built.preprocessing)
    np.testing.assert_array_equal(loaded.embeddings[:8], built.embeddings)
    np.testing.assert_array_equal(loaded.embeddings, grown.embeddings)
    assert (map_dir / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # no scratch folder left
    match = loaded.localize(loaded.embeddings[10], k=1, query_fingerprint=loaded.model_fingerprint)
    assert match[0][0].frame_id == "01/000002"


def test_map_add_refuses_what_does_not_belong(town: dict[str, Path], tmp_path: Path) -> None:
    map_dir = tmp_path / "m"
    build_map(town["run"], town["root"], ["02"], map_dir, device="cpu", onnx=False)
    before = (map_dir / "manifest.json").read_text()

    with pytest.raises(ConfigError, match="sequence 02 is already in the map"):
        add_to_map(map_dir, town["root"], ["02"], device="cpu")
    elsewhere = write_corridors(tmp_path / "elsewhere", ("05", 3, 5))  # a world of its own
    with pytest.raises(ConfigError) as err:
        add_to_map(map_dir, elsewhere, ["05"], device="cpu")
    assert (
        "'kitti:" in str(err.value) and "05 (own frame)" in str(err.value) and "town frame" in str(err.value)
    )
    with pytest.raises(ModelMismatchError, match="this map was built with model"):
        add_to_map(map_dir, town["root"], ["01"], checkpoint=town["other"], device="cpu")
    with pytest.raises(ConfigError, match="embedded in fp32; its drives must all be"):
        add_to_map(map_dir, town["root"], ["01"], device="cpu", precision="bf16")
    assert (map_dir / "manifest.json").read_text() == before  # nothing changed

    manifest = json.loads(before)
    manifest["preprocessing"] = "0123456789abcdef"
    (map_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"preprocessing \(\w+\) is not the map's \(0123456789abcdef\)"):
        add_to_map(map_dir, town["root"], ["01"], device="cpu")
    manifest["world"] = None  # a map built before worlds were recorded
    (map_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="does not record its world frame"):
        add_to_map(map_dir, town["root"], ["01"], device="cpu")
