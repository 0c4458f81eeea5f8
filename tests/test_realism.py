"""Synthetic camera images look like KITTI's: their brightness, RMS contrast and colourfulness stay
within a band around those of the real posed drive (shared/data/kitti-raw-posed), and the image
statistics of ``liploc.synth.realism`` measure what they claim on images made to order.

The flat renderer before issue 22 fails the first test on every statistic: on these frames its
brightness, RMS contrast and colourfulness are 1.41, 0.51 and 0.46 times the real drive's (now
1.04, 0.99 and 1.12)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared_data

from liploc.datasets import open_dataset
from liploc.datasets.scan import load_image
from liploc.synth import SynthOptions, build_town_and_drives
from liploc.synth.camera_model import CameraModel
from liploc.synth.cars import drive_cars
from liploc.synth.meshes import TriangleMesh
from liploc.synth.realism import (
    colourfulness,
    image_statistics,
    mean_statistics,
    scan_statistics,
    spectrum_slope,
)
from liploc.synth.rig import kitti_rig
from liploc.synth.scene import Scene

BAND = 0.25
"""Allowed relative deviation from the real drive (the benchmark's goal is 20 % on more frames)."""
BANDED = ("brightness", "rms_contrast", "colourfulness")


def _synthetic_images(image_scale: float = 1.0) -> list[np.ndarray]:
    """Camera images of two small towns, three drives each (each with its own light), two places per
    drive 20 m apart: 12 images at KITTI's full size."""
    rig = kitti_rig(image_scale)
    images = []
    for seed in (0, 1):
        options = SynthOptions(town_seed=seed, drives=3, frames=2, frame_spacing_m=20.0, blocks=(3, 2))
        town, plans = build_town_and_drives(options)
        camera = CameraModel(rig, seed=town.seed)
        first_car = int(town.mesh.parts.object_id.max()) + 1
        for plan in plans:
            cars, _ = drive_cars(
                town.slots, town.streets, plan.path, np.random.default_rng(plan.cars_seed), first_car
            )
            scene = Scene(TriangleMesh.concatenate([town.mesh, cars]), town.ground)
            for k, pose in enumerate(plan.poses):
                rng = np.random.default_rng([seed, 1000, plan.index, k])
                images.append(camera.render(scene, pose, plan.lighting, rng).image)
    return images


@pytest.fixture(scope="module")
def real_statistics() -> dict[str, float]:
    drive = require_shared_data() / "kitti-raw-posed"
    reader = open_dataset(drive)
    frames = [f for seq in reader.sequences() for f in reader.frames(seq)]
    assert len(frames) == 24
    return mean_statistics(image_statistics(load_image(f.image_path)) for f in frames)


def test_synthetic_images_match_the_real_drive_in_brightness_contrast_and_colour(real_statistics) -> None:
    images = _synthetic_images()
    assert len(images) == 12 and images[0].shape == (376, 1241, 3)
    synth = mean_statistics(image_statistics(image) for image in images)
    ratios = {key: synth[key] / real_statistics[key] for key in BANDED}
    print(
        {
            key: (round(real_statistics[key], 4), round(synth[key], 4), round(r, 2))
            for key, r in ratios.items()
        }
    )
    for key, ratio in ratios.items():
        assert abs(ratio - 1.0) <= BAND, (key, real_statistics[key], synth[key], ratio)
    # Not one flat look either: the drives' light differs, so do the images' brightness and colour.
    per_image = np.array([[image_statistics(im)[k] for k in BANDED] for im in images])
    assert per_image[:, 0].std() > 0.02 and per_image[:, 2].std() > 0.01


def test_statistics_measure_what_they_claim() -> None:
    rng = np.random.default_rng(0)
    grey = np.full((188, 620, 3), 120, dtype=np.uint8)
    stats = image_statistics(grey)
    assert stats["rms_contrast"] < 1e-6 and stats["colourfulness"] < 1e-6 and stats["edge_density"] == 0.0
    assert stats["brightness"] == pytest.approx(120 / 255, abs=1e-3)
    # Pure red and green halves: strongly colourful; a grey ramp: not at all.
    halves = np.zeros((64, 64, 3), dtype=np.float32)
    halves[:, :32, 0] = 1.0
    halves[:, 32:, 1] = 1.0
    ramp = np.repeat(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], 64, axis=0).repeat(3, axis=2)
    assert colourfulness(halves) > 0.5 and colourfulness(ramp) < 1e-6
    # White noise has a flat spectrum; noise with amplitude ~ 1/f (power ~ 1/f^2) a slope of -2.
    white = rng.standard_normal((188, 620)).astype(np.float32)
    assert spectrum_slope(white) == pytest.approx(0.0, abs=0.3)
    fy = np.fft.fftfreq(188)[:, None]
    fx = np.fft.fftfreq(620)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    pink = np.fft.ifft2(np.fft.fft2(white) / f).real.astype(np.float32)
    assert spectrum_slope(pink) == pytest.approx(-2.0, abs=0.3)


def test_scan_statistics_of_a_wall_ahead() -> None:
    # A wall 10 m ahead filling the forward view: the crop is full at 10 m (and beyond it, where
    # the beams meet the wall further out); intensity is the points' mean.
    az = np.radians(np.linspace(-60, 60, 2000))
    el = np.radians(np.linspace(-10, 2, 40))
    a, e = np.meshgrid(az, el)
    r = 10.0 / (np.cos(a) * np.cos(e))
    points = np.stack(
        [r * np.cos(e) * np.cos(a), r * np.cos(e) * np.sin(a), r * np.sin(e), np.full_like(r, 0.3)], axis=-1
    ).reshape(-1, 4)
    stats = scan_statistics(points.astype(np.float32))
    assert stats["crop_valid"] > 0.5
    assert 10.0 <= stats["crop_range_mean_m"] < stats["crop_range_p90_m"] < 20.0
    assert stats["intensity_mean"] == pytest.approx(0.3, abs=1e-6)
