"""Sun and sky of a drive: fixed for the whole drive, drawn anew for each drive.

Lighting never changes along a drive, so image brightness cannot tell the frame index; it changes
between drives (time of day: sun height, direction and colour; clear to cloudy skies; haze;
exposure and white balance) like real drives on other days.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        white_balance: (3,) gains of the camera's colour channels.
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
    white_balance: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.float32))

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
    """Lighting of a daytime drive: sun 12-65 degrees high (warmer and weaker when low), clear to
    cloudy sky (mostly clear, as on KITTI's drives), some haze, per-drive exposure and white balance."""
    elevation = np.radians(rng.uniform(12.0, 65.0))
    azimuth = rng.uniform(-np.pi, np.pi)
    sun_direction = np.array(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    )
    clouds = float(0.85 * rng.beta(1.1, 2.2))
    low = 1.0 - np.sin(elevation)  # 0.1 at noon-like light, 0.8 with the sun low
    warmth = rng.uniform(0.05, 0.3) * low
    # Direct sun against sky light about 5:1 on a clear day (deep shadows), less under clouds.
    sun_colour = (
        np.array([1.0 + warmth, 0.96, 0.9 - 1.4 * warmth]) * rng.uniform(3.0, 3.6) * (1.0 - 0.7 * clouds)
    )
    zenith = np.array([0.12, 0.3, 0.8]) * (1 - clouds) + np.array([0.7, 0.72, 0.76]) * clouds
    horizon = np.array([0.9, 1.02, 1.2]) * (1 - 0.6 * clouds) + np.array([0.95, 0.95, 0.97]) * 0.6 * clouds
    horizon = horizon * (1.0 + 0.25 * warmth * np.array([1.0, 0.2, -0.6]))
    # Sky light on a surface facing up: bluish, about a fifth of the sun on a clear day.
    ambient = np.array([0.22, 0.27, 0.36]) * rng.uniform(0.8, 1.0) * (1.0 + 1.5 * clouds)
    # The camera's white balance is set for sunlight, a little warm, and differs between drives.
    balance = np.array([rng.uniform(1.0, 1.08), 1.0, rng.uniform(0.82, 0.92)])
    return Lighting(
        sun_direction=sun_direction.astype(np.float32),
        sun_colour=sun_colour.astype(np.float32),
        ambient=ambient.astype(np.float32),
        zenith=zenith.astype(np.float32),
        horizon=horizon.astype(np.float32),
        haze_distance=float(rng.uniform(800.0, 2500.0)),
        clouds=clouds,
        cloud_seed=int(rng.integers(0, 2**31 - 1)),
        exposure=float(rng.uniform(0.85, 1.15)),
        white_balance=balance.astype(np.float32),
    )


def _fbm(x: np.ndarray, y: np.ndarray, seed: int, octaves: int) -> np.ndarray:
    total = np.zeros(x.shape, dtype=np.float32)
    weight, norm, scale = 1.0, 0.0, 1.0
    for octave in range(octaves):
        total += np.float32(weight) * value_noise(x * np.float32(scale), y * np.float32(scale), seed + octave)
        norm += weight
        weight *= 0.5
        scale *= 2.03
    return total / np.float32(norm)


def sky_colour(dirs: np.ndarray, light: Lighting, clouds: bool = True) -> np.ndarray:
    """(N, 3) sky radiance seen in the unit directions ``dirs`` (z up).

    A gradient from a pale horizon to a deeper zenith, a glow around the sun, and a cloud layer.
    Clouds are a function of the direction only (infinitely far), so they move with the car's
    heading, never with its position. ``clouds=False`` leaves them out (reflections, cheaper).
    """
    up = np.clip(dirs[:, 2], 0.0, 1.0)[:, None]
    blend = np.sqrt(up)
    colour = light.horizon * (1 - blend) + light.zenith * blend
    cos_sun = np.clip(dot(dirs, light.sun_direction), 0.0, 1.0)[:, None]
    colour = colour + light.sun_colour * (0.06 * cos_sun**6 + 0.5 * cos_sun**600)
    if clouds and light.clouds > 0:
        # Cloud layer seen through the ray's intersection with a dome (coordinates per direction);
        # only directions above the horizon can see it.
        above = np.flatnonzero(dirs[:, 2] > 0)
        d = dirs[above]
        u = up[above, 0]
        scale = 2.5 / (u + 0.12)
        cx = d[:, 0] * scale
        cy = d[:, 1] * scale
        noise = _fbm(cx, cy, light.cloud_seed, 4)
        density = np.clip((noise - (0.72 - 0.45 * light.clouds)) * 3.2, 0.0, 1.0)
        # Thick cloud is grey underneath, thin edges bright where the sun shines through.
        lit = 0.95 + 0.5 * cos_sun[above, 0] ** 4
        shade = (1.0 - 0.35 * density) * lit * (0.8 + 0.35 * u)
        cloud = np.array([0.82, 0.84, 0.88], dtype=np.float32) * shade[:, None]
        cover = (density * (0.9 - 0.1 * u))[:, None]
        colour[above] = colour[above] * (1 - cover) + cloud * cover
    return colour.astype(np.float32)
