"""LiDAR map: build, localize, save/load round trip, refusal of other models, corrupt files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from liploc.errors import DataError, EmbeddingError, ModelMismatchError
from liploc.localization.index import l2_normalize
from liploc.localization.lidar_map import LidarMap

FINGERPRINT = "sha256:model-a"
MODEL_CONFIG = {"image_encoder": "resnet50", "lidar_encoder": "resnet50", "embed_dim": 16}


def pose(x: float, y: float, yaw: float) -> np.ndarray:
    out = np.eye(4)
    out[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    out[:3, 3] = [x, y, 1.7]
    return out


def small_map(n: int = 30) -> LidarMap:
    rng = np.random.default_rng(0)
    embeddings = l2_normalize(rng.normal(size=(n, 16)))
    poses = np.stack([pose(2.0 * i, -i, 0.1 * i) for i in range(n)])
    frame_ids = [("08", 10 * i) for i in range(n)]
    times = [0.1 * i if i % 2 else None for i in range(n)]
    return LidarMap.build(embeddings, poses, frame_ids, FINGERPRINT, MODEL_CONFIG, timestamps=times)


def test_localize_returns_the_matching_frames_with_poses() -> None:
    lidar_map = small_map()
    query = l2_normalize(lidar_map.embeddings[[7, 21]] + 0.01)
    matches = lidar_map.localize(query, k=3, query_fingerprint=FINGERPRINT)
    assert len(matches) == 2 and all(len(m) == 3 for m in matches)
    best = matches[0][0]
    assert (best.rank, best.map_index, best.sequence, best.frame_index) == (1, 7, "08", 70)
    assert best.frame_id == "08/000070"
    assert best.xy.tolist() == pytest.approx([14.0, -7.0])
    assert best.yaw == pytest.approx(0.7)
    assert best.timestamp == pytest.approx(0.7)
    assert matches[1][0].map_index == 21
    assert [m.rank for m in matches[0]] == [1, 2, 3]
    assert matches[0][0].score >= matches[0][1].score >= matches[0][2].score
    single = lidar_map.localize(lidar_map.embeddings[4], k=1, query_fingerprint=FINGERPRINT)
    assert single[0][0].map_index == 4 and single[0][0].timestamp is None


def test_other_model_is_refused_naming_both() -> None:
    lidar_map = small_map()
    with pytest.raises(ModelMismatchError) as err:
        lidar_map.localize(lidar_map.embeddings[:1], k=1, query_fingerprint="sha256:model-b")
    assert "sha256:model-a" in str(err.value) and "sha256:model-b" in str(err.value)
    assert "resnet50" in str(err.value)
    with pytest.raises(EmbeddingError, match="dimension"):
        lidar_map.localize(l2_normalize(np.ones((1, 8))), k=1, query_fingerprint=FINGERPRINT)


def test_save_load_round_trip(tmp_path: Path) -> None:
    lidar_map = small_map()
    folder = lidar_map.save(tmp_path / "maps" / "08")
    assert sorted(p.name for p in folder.iterdir()) == [
        "embeddings.npy",
        "frames.json",
        "index.faiss",
        "manifest.json",
        "poses.npy",
    ]
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["08"]  # no temporary folder left
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"] == {"fingerprint": FINGERPRINT, "config": MODEL_CONFIG}
    assert manifest["num_entries"] == 30 and manifest["version"] == 1
    loaded = LidarMap.load(folder)
    assert len(loaded) == 30 and loaded.dim == 16
    np.testing.assert_array_equal(loaded.embeddings, lidar_map.embeddings)
    np.testing.assert_array_equal(loaded.poses, lidar_map.poses)
    assert loaded.sequences == lidar_map.sequences
    assert loaded.frame_indices.tolist() == lidar_map.frame_indices.tolist()
    np.testing.assert_array_equal(loaded.timestamps, lidar_map.timestamps)  # NaN where unknown
    assert loaded.model_fingerprint == FINGERPRINT and loaded.model_config == MODEL_CONFIG
    query = lidar_map.embeddings[[3, 9]]
    a = lidar_map.localize(query, k=4, query_fingerprint=FINGERPRINT)
    b = loaded.localize(query, k=4, query_fingerprint=FINGERPRINT)
    assert [[m.map_index for m in row] for row in a] == [[m.map_index for m in row] for row in b]


def test_save_replaces_a_map_but_not_other_folders(tmp_path: Path) -> None:
    small_map(30).save(tmp_path / "m")
    small_map(12).save(tmp_path / "m")
    assert len(LidarMap.load(tmp_path / "m")) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a liploc map folder"):
        small_map().save(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("name", ["embeddings.npy", "poses.npy", "frames.json", "index.faiss"])
def test_corrupt_file_is_named(tmp_path: Path, name: str) -> None:
    folder = small_map().save(tmp_path / "m")
    data = bytearray((folder / name).read_bytes())
    data[-3] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{name}: checksum does not match"):
        LidarMap.load(folder)


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="map folder not found"):
        LidarMap.load(tmp_path / "nowhere")
    folder = small_map().save(tmp_path / "m")
    (folder / "poses.npy").unlink()
    with pytest.raises(DataError, match=r"poses\.npy: missing map file"):
        LidarMap.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: unreadable map manifest"):
        LidarMap.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: missing"):
        LidarMap.load(folder)


def test_build_checks_its_inputs() -> None:
    emb = l2_normalize(np.ones((3, 4)))
    poses = np.stack([np.eye(4)] * 3)
    ids = [("00", i) for i in range(3)]
    with pytest.raises(ValueError, match="poses"):
        LidarMap.build(emb, poses[:2], ids, FINGERPRINT, {})
    with pytest.raises(ValueError, match="frame_ids"):
        LidarMap.build(emb, poses, ids[:2], FINGERPRINT, {})
    with pytest.raises(EmbeddingError, match="L2-normalised"):
        LidarMap.build(2 * emb, poses, ids, FINGERPRINT, {})
    with pytest.raises(ValueError, match="fingerprint"):
        LidarMap.build(emb, poses, ids, "", {})


def test_load_memory_maps_the_embeddings_and_poses(tmp_path: Path) -> None:
    folder = small_map().save(tmp_path / "m")
    loaded = LidarMap.load(folder)
    assert isinstance(loaded.embeddings, np.memmap) and isinstance(loaded.poses, np.memmap)
    assert not loaded.embeddings.flags.writeable
    assert loaded.sequences[0] is loaded.sequences[1]  # one string per drive, not per entry
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["index_kind"] == "flat" and manifest["index"] == {"kind": "flat"}


def test_a_compressed_index_round_trips_with_its_settings(tmp_path: Path) -> None:
    lidar_map = small_map()
    built = LidarMap.build(
        lidar_map.embeddings,
        lidar_map.poses,
        [("08", i) for i in range(30)],
        FINGERPRINT,
        MODEL_CONFIG,
        index_kind="flat-fp16",
        world="synth:/data:town",
    )
    built.index.shortlist = 5
    folder = built.save(tmp_path / "m")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 2  # a liploc that cannot re-rank refuses it
    assert manifest["index"] == {"kind": "flat-fp16", "shortlist": 5}
    assert manifest["world"] == "synth:/data:town"
    loaded = LidarMap.load(folder)
    assert (loaded.index.kind, loaded.index.shortlist, loaded.world) == ("flat-fp16", 5, "synth:/data:town")
    assert loaded.index.vectors is loaded.embeddings
    query = lidar_map.embeddings[[3, 9]]
    scores, ids = loaded.search(query, 4, query_fingerprint=FINGERPRINT)
    np.testing.assert_allclose(scores, np.take_along_axis(query @ lidar_map.embeddings.T, ids, 1), atol=1e-6)
    assert ids[:, 0].tolist() == [3, 9]


def test_an_index_that_does_not_hold_the_embeddings_is_refused(tmp_path: Path) -> None:
    """The issue's crafted map: index.faiss replaced by an index over other vectors (45.2 times
    the embeddings) and its checksum updated: every file verifies, the scores were 45.2."""
    from liploc.checksums import file_size_and_sha256
    from liploc.localization.index import EmbeddingIndex

    lidar_map = small_map()
    folder = lidar_map.save(tmp_path / "m")
    forged = EmbeddingIndex.build(45.2 * lidar_map.embeddings, kind="flat", unit_norm=False)
    forged.save(folder / "index.faiss")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["index.faiss"]["sha256"] = file_size_and_sha256(folder / "index.faiss")[1]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"index\.faiss: does not match embeddings\.npy: .* scores entry"):
        LidarMap.load(folder)
    manifest["index_kind"] = "hnsw"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"index\.faiss: holds a flat index but the manifest says hnsw"):
        LidarMap.load(folder)


def test_maps_of_another_version_are_refused_naming_the_versions(tmp_path: Path) -> None:
    folder = small_map().save(tmp_path / "m")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"map format version 3 is not supported .*versions 1 and 2"):
        LidarMap.load(folder)
