"""A Velodyne HDL-64E as on the KITTI car: 64 beams over +2 to -24.9 degrees, 360 degrees.

Returns carry 2 cm range noise and an intensity from the material and (weakly) the incidence
angle; glass, tyres and leaves drop some beams, and leaves return from inside the crown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.materials import LIDAR_DROPOUT, LIDAR_PENETRATION_M, LIDAR_REFLECTIVITY, Material
from liploc.synth.scene import Scene
from liploc.synth.vec3 import dot, rotate


def hdl64e_elevations() -> np.ndarray:
    """(64,) beam elevations in degrees, top to bottom: two blocks of 32 lasers like the HDL-64E."""
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    return np.concatenate([upper, lower])


@dataclass(frozen=True)
class LidarModel:
    """Beam layout and range behaviour.

    Attributes:
        columns: firings per revolution (KITTI's HDL-64E at 10 Hz: about 2000).
        max_range: returns beyond this are lost (metres).
        min_range: returns closer than this are dropped (metres).
        range_noise: standard deviation of the range error (metres).
    """

    columns: int = 2048
    max_range: float = 120.0
    min_range: float = 1.0
    range_noise: float = 0.02

    def directions(self, azimuth_offset: float = 0.0) -> np.ndarray:
        """(64 * columns, 3) float32 unit beam directions in the LiDAR frame (x forward, z up).

        Beam-major order: the first ``columns`` rays are those of the top laser. The sweep starts
        behind the car and turns clockwise seen from above, like the Velodyne.
        """
        elevation = np.radians(hdl64e_elevations()).astype(np.float32)[:, None, None]
        azimuth = np.pi - 2 * np.pi * (np.arange(self.columns) + azimuth_offset) / self.columns
        ring = np.stack([np.cos(azimuth), np.sin(azimuth), np.zeros_like(azimuth)], axis=-1).astype(
            np.float32
        )
        dirs = ring[None] * np.cos(elevation)
        dirs[..., 2] = np.sin(elevation)[..., 0]
        return dirs.reshape(-1, 3)


@dataclass(frozen=True, eq=False)
class LidarScan:
    """A simulated scan.

    Attributes:
        points: (N, 4) float32 x, y, z (LiDAR frame) and intensity in [0, 1].
        object_id: (N,) int32 object each point hit (``scene.GROUND_OBJECT`` for the ground).
    """

    points: np.ndarray
    object_id: np.ndarray


def simulate_scan(
    scene: Scene, T_world_lidar: np.ndarray, model: LidarModel, rng: np.random.Generator
) -> LidarScan:
    """One revolution of the LiDAR at pose ``T_world_lidar`` (4x4)."""
    dirs_lidar = model.directions(float(rng.random()))
    R = T_world_lidar[:3, :3].astype(np.float32)
    origin = T_world_lidar[:3, 3].astype(np.float32)
    dirs = rotate(dirs_lidar, R)
    origins = np.broadcast_to(origin, dirs.shape)
    hits = scene.cast(origins, dirs)

    material = hits.material
    keep = np.isfinite(hits.t) & (hits.t <= model.max_range) & (hits.t >= model.min_range)
    keep &= rng.random(len(material)) >= LIDAR_DROPOUT[material]
    idx = np.flatnonzero(keep)
    mat = material[idx]
    rng_noise = rng.normal(0.0, model.range_noise, idx.size).astype(np.float32)
    penetration = np.abs(rng.normal(0.0, 1.0, idx.size)).astype(np.float32) * LIDAR_PENETRATION_M[mat]
    distance = hits.t[idx] + rng_noise + penetration

    reflectivity = LIDAR_REFLECTIVITY[mat].copy()
    part = hits.part[idx]
    from_part = (part >= 0) & (mat != Material.GLASS)
    reflectivity[from_part] = scene.parts.reflectivity[part[from_part]]
    cos_incidence = np.abs(dot(hits.normal[idx], dirs[idx]))
    # Weakly dependent on the angle of incidence: with 0.45 + 0.55 cos the mean intensity was 0.19,
    # the real posed KITTI drive's is 0.25 (benchmarks/realism.py).
    intensity = reflectivity * (0.65 + 0.35 * cos_incidence) * (1.0 + rng.normal(0.0, 0.06, idx.size))
    intensity = np.round(np.clip(intensity, 0.0, 0.99), 2)

    points = np.empty((idx.size, 4), dtype=np.float32)
    points[:, :3] = dirs_lidar[idx] * distance[:, None]
    points[:, 3] = intensity
    return LidarScan(points=points, object_id=hits.object_id[idx])
