"""Validation held out of the training sequences without leaking: contiguous blocks and a gap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corridor_world import write_corridor

from liploc.config import load_config
from liploc.datasets import Calibration, Frame
from liploc.runtime.data_roots import resolve_data_roots
from liploc.training.train import train
from liploc.training.validation_split import block_split, min_train_val_distance, random_split

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CALIB = Calibration(T_cam_lidar=np.eye(4), P=np.zeros((3, 4)))


def frames_at(sequence: str, xy: np.ndarray) -> list[Frame]:
    out = []
    for i, (x, y) in enumerate(xy):
        pose = np.eye(4)
        pose[:2, 3] = x, y
        out.append(Frame(sequence, i, Path(f"{sequence}/{i}.png"), Path(f"{sequence}/{i}.bin"), pose, CALIB))
    return out


def straight(n: int, step_m: float = 1.0) -> np.ndarray:
    return np.column_stack([np.arange(n) * step_m, np.zeros(n)])


def nearest(a: list[Frame], b: list[Frame]) -> float:
    pa = np.array([f.position_xy for f in a])
    pb = np.array([f.position_xy for f in b])
    return float(np.linalg.norm(pa[:, None] - pb[None], axis=-1).min())


@pytest.mark.parametrize("seed", range(5))
def test_blocks_are_contiguous_and_no_training_frame_is_within_the_gap(seed: int) -> None:
    frames = frames_at("00", straight(300)) + frames_at("01", straight(100) + np.array([0.0, 500.0]))
    held = block_split(frames, 0.2, 20.0, seed)
    assert held.blocks == 2
    for seq, n in (("00", 300), ("01", 100)):
        val = sorted(f.index for f in held.val if f.sequence == seq)
        assert len(val) == round(0.2 * n) and val == list(range(val[0], val[0] + len(val)))  # one block
        train = [f for f in held.train if f.sequence == seq]
        assert nearest(train, [f for f in held.val if f.sequence == seq]) > 20.0
    # Every frame is in exactly one of train, val, gap; the gap is the frames within 20 m.
    ids = [(f.sequence, f.index) for f in held.train + held.val + held.gap]
    assert len(ids) == len(set(ids)) == 400
    assert all(nearest([g], [v for v in held.val if v.sequence == g.sequence]) <= 20.0 for g in held.gap)
    assert 20 <= len(held.gap) <= 80  # 20 m on each side of each block, less at a sequence end
    assert min_train_val_distance(held.train, held.val) > 20.0


def test_a_loop_back_to_the_validation_block_is_kept_out_of_training() -> None:
    # Out along x and back 2 m to the side: the way back passes every validation place again.
    out = straight(100)
    back = out[::-1] + np.array([0.0, 2.0])
    frames = frames_at("00", np.concatenate([out, back]))
    held = block_split(frames, 0.1, 10.0, seed=1)
    assert min_train_val_distance(held.train, held.val) > 10.0
    val_x = [f.position_xy[0] for f in held.val]
    on_the_way_back = [f for f in held.gap if f.index >= 100]
    assert on_the_way_back, "the revisit of the block must fall in the gap"
    assert all(min(val_x) - 10 <= f.position_xy[0] <= max(val_x) + 10 for f in on_the_way_back)


def test_positions_of_different_sequences_are_not_compared() -> None:
    # Two sequences in frames of their own that both start at (0, 0): the other sequence's frames at
    # the same coordinates are not neighbours and stay in training.
    frames = frames_at("00", straight(50)) + frames_at("01", straight(200))
    held = block_split(frames, 0.2, 20.0, seed=0)
    assert sum(f.sequence == "01" for f in held.gap) <= 80
    assert sum(f.sequence == "00" for f in held.train + held.gap) == 40
    assert min_train_val_distance(held.train, held.val) > 20.0
    assert min_train_val_distance(frames_at("00", straight(5)), frames_at("01", straight(5))) is None


def test_the_papers_random_split_leaks_a_neighbour_one_metre_away() -> None:
    frames = frames_at("00", straight(500))
    held = random_split(frames, 0.2, seed=0)
    assert len(held.val) == 100 and held.gap == [] and held.blocks == 0
    assert min_train_val_distance(held.train, held.val) == pytest.approx(1.0)


@pytest.mark.usefixtures("one_thread")  # see conftest.py
def test_training_log_and_summary_give_the_splits_and_the_smallest_distance(tmp_path: Path) -> None:
    write_corridor(tmp_path / "data", "00", 80, seed=0)  # frames 1 m apart
    cfg = load_config(
        TINY,
        [
            "data.num_workers=0",
            "data.datasets=[{train: ['00']}]",
            "data.val_gap_m=5",
            "train.max_steps=1",
            "train.batch_size=8",
        ],
    )
    result = train(resolve_data_roots(cfg, [tmp_path / "data"]), tmp_path / "run", progress=False)
    splits = json.loads((tmp_path / "run" / "summary.json").read_text())["splits"]
    assert splits["val_split"] == "blocks" and splits["val_gap_m"] == 5
    assert splits["val_frames"] == 16
    gap = splits["left_out"]["val_gap"]
    assert 5 <= gap <= 10 and splits["train_frames"] == 80 - 16 - gap
    assert splits["min_train_val_distance_m"] == pytest.approx(6.0)  # 1 m steps: first beyond 5 m
    assert result.metrics["val_pairs"] == 16
    log = (tmp_path / "run" / "train.log").read_text()
    assert "16 frames in 1 contiguous region(s)" in log and f"gap 5 m: {gap} frames" in log
    assert "smallest train-validation distance: 6.0 m" in log


class TownFrame(Frame):
    """A frame whose reader says its pose is in the frame shared by a whole town."""

    world_id = "town"


def test_sequences_of_one_world_keep_each_other_out_of_the_gap() -> None:
    # Two drives along the same street, 2 m apart, in one world: the validation region takes both
    # passes, and the gap keeps both drives' frames near it out of training.
    def town(sequence: str, xy: np.ndarray) -> list[Frame]:
        return [
            TownFrame(f.sequence, f.index, f.image_path, f.scan_path, f.pose, f.calib)
            for f in frames_at(sequence, xy)
        ]

    frames = town("00", straight(200)) + town("01", straight(200) + np.array([0.0, 2.0]))
    held = block_split(frames, 0.1, 15.0, seed=4)
    assert held.blocks == 1 and len(held.val) == 40  # one region of the world: both passes through it
    assert {f.sequence for f in held.val} == {"00", "01"}
    assert nearest(held.train, held.val) > 15.0  # across the two drives as well
    assert min_train_val_distance(held.train, held.val) == pytest.approx(nearest(held.train, held.val))
    # By sequence alone (no shared world) the other drive's frames would stay in training.
    alone = block_split(
        frames_at("00", straight(200)) + frames_at("01", straight(200) + np.array([0.0, 2.0])),
        0.1,
        15.0,
        seed=4,
    )
    assert nearest(alone.train, alone.val) < 15.0


def test_named_val_sequences_that_pass_where_training_drives_do_are_called_a_leak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # configs/tiny.yaml trains on 00 and validates on 01; on a synthetic town 01 is 00's partner
    # drive one lane over, and the log said "0.1 m (same sequence)" of two different drives.
    import liploc.training.splits as splits

    def town(sequence: str, xy: np.ndarray) -> list[Frame]:
        return [
            TownFrame(f.sequence, f.index, f.image_path, f.scan_path, f.pose, f.calib)
            for f in frames_at(sequence, xy)
        ]

    drives = {"train": town("00", straight(100)), "val": town("01", straight(60) + np.array([0.0, 3.0]))}
    monkeypatch.setattr(splits, "check_named_sequences", lambda data: (data, []))
    monkeypatch.setattr(splits, "_unpaired_count", lambda data, split: 0)
    monkeypatch.setattr(splits, "split_frames", lambda data, split: list(drives[split]))
    data = load_config(TINY).data
    notes = " | ".join(splits.training_splits(data, seed=0).notes)
    assert "smallest train-validation distance: 3.0 m (same world)" in notes
    assert "validation leaks: 60 of 60 validation frames lie within 20 m of a training frame" in notes
    # Validation on another street (200 m away) is not called a leak.
    drives["val"] = town("01", straight(60) + np.array([0.0, 200.0]))
    notes = " | ".join(splits.training_splits(data, seed=0).notes)
    assert "leaks" not in notes and "200.0 m (same world)" in notes
