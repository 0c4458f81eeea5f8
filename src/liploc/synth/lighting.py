"""Sun and sky of a drive: fixed for the whole drive, drawn anew for each drive.

Lighting never changes along a drive, so image brightness cannot tell the frame index; it changes
between drives (sun height and direction, haze, exposure) like real drives on other days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.textures import value_noise
from liploc.synth.vec3 import dot


@dataclass(frozen=True, eq=False)
class Lighting:
    """Light of one drive (linear RGB).

    Attributes:
        sun_direction: (3,) unit vector towards the sun (z up).
        sun_colour: (3,) irradiance of direct sunlight.
        ambient: (3,) sky light on a surface facing up.
        zenith: (3,) sky colour straight up.
        horizon: (3,) sky colour at the horizon (and of distant haze).
        haze_distance: metres over which the scene fades into the horizon colour.
        clouds: cloud cover in [0, 1].
        cloud_seed: seed of the cloud pattern.
        exposure: camera exposure factor.
    """

    sun_direction: np.ndarray
    sun_colour: np.ndarray
    ambient: np.ndarray
    zenith: np.ndarray
    horizon: np.ndarray
    haze_distance: float
    clouds: float
    cloud_seed: int
    exposure: float

    def describe(self) -> dict[str, float]:
        """Sun elevation and azimuth (degrees), clouds and haze, for the manifest."""
        d = self.sun_direction
        return {
            "sun_elevation_deg": round(float(np.degrees(np.arcsin(d[2]))), 1),
            "sun_azimuth_deg": round(float(np.degrees(np.arctan2(d[1], d[0]))), 1),
            "clouds": round(self.clouds, 2),
            "haze_distance_m": round(self.haze_distance, 1),
        }


def random_lighting(rng: np.random.Generator) -> Lighting:
    """Lighting of a daytime drive: sun 15-65 degrees high, clear to hazy sky."""
    elevation = np.radians(rng.uniform(15.0, 65.0))
    azimuth = rng.uniform(-np.pi, np.pi)
    sun_direction = np.array(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    )
    clouds = float(rng.uniform(0.0, 0.8))
    warmth = rng.uniform(0.0, 0.25) * (1.0 - np.sin(elevation))
    sun_colour = np.array([1.0 + warmth, 0.95, 0.88 - warmth]) * rng.uniform(2.2, 2.8) * (1.0 - 0.55 * clouds)
    zenith = np.array([0.16, 0.3, 0.65]) * (1 - clouds) + np.array([0.45, 0.47, 0.5]) * clouds
    horizon = np.array([0.6, 0.68, 0.78]) * (1 - 0.4 * clouds) + np.array([0.62, 0.62, 0.62]) * 0.4 * clouds
    ambient = (0.55 * zenith + 0.45 * horizon) * rng.uniform(0.8, 1.1) * (1.0 + 0.6 * clouds)
    return Lighting(
        sun_direction=sun_direction.astype(np.float32),
        sun_colour=sun_colour.astype(np.float32),
        ambient=ambient.astype(np.float32),
        zenith=zenith.astype(np.float32),
        horizon=horizon.astype(np.float32),
        haze_distance=float(rng.uniform(250.0, 700.0)),
        clouds=clouds,
        cloud_seed=int(rng.integers(0, 2**31 - 1)),
        exposure=float(rng.uniform(0.85, 1.15)),
    )


def sky_colour(dirs: np.ndarray, light: Lighting) -> np.ndarray:
    """(N, 3) sky radiance seen in the unit directions ``dirs`` (z up).

    Clouds are a function of the direction only (infinitely far), so they move with the car's
    heading, never with its position.
    """
    up = np.clip(dirs[:, 2], 0.0, 1.0)[:, None]
    blend = np.sqrt(up)
    colour = light.horizon * (1 - blend) + light.zenith * blend
    cos_sun = np.clip(dot(dirs, light.sun_direction), 0.0, 1.0)[:, None]
    colour = colour + light.sun_colour * (0.04 * cos_sun**8 + 0.5 * cos_sun**600)
    if light.clouds > 0:
        # Cloud layer seen through the ray's intersection with a dome (coordinates per direction);
        # only directions above the horizon can see it.
        above = np.flatnonzero(dirs[:, 2] > 0)
        d = dirs[above]
        u = up[above, 0]
        scale = 3.0 / (u + 0.15)
        cx = d[:, 0] * scale
        cy = d[:, 1] * scale
        noise = 0.6 * value_noise(cx, cy, light.cloud_seed) + 0.4 * value_noise(
            2.1 * cx, 2.1 * cy, light.cloud_seed + 1
        )
        cover = np.clip((noise - (1.0 - light.clouds)) * 3.0, 0.0, 1.0)[:, None]
        cloud = np.array([0.85, 0.86, 0.88], dtype=np.float32) * (0.7 + 0.3 * u[:, None])
        colour[above] = colour[above] * (1 - cover) + cloud * cover
    return colour.astype(np.float32)
