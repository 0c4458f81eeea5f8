"""The left colour camera (KITTI ``image_2``): one ray per pixel (or per sub-pixel) into the scene.

Shading: per-material colours with procedural texture, sunlight with cast shadows, sky light,
sky reflections on glass and paint, haze with distance, then exposure, gamma and sensor noise.
Nothing depends on the frame index; only the scene and the drive's lighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.lighting import Lighting, sky_colour
from liploc.synth.materials import N_MATERIALS, SPECULAR, TEXTURE_NOISE, Material
from liploc.synth.rig import SensorRig
from liploc.synth.scene import Scene
from liploc.synth.textures import surface_coordinates, value_noise
from liploc.synth.vec3 import dot, rotate

_GROUND_COLOURS = {
    Material.ROAD: (0.085, 0.085, 0.09),
    Material.MARKING: (0.72, 0.72, 0.68),
    Material.SIDEWALK: (0.3, 0.285, 0.26),
    Material.CURB: (0.4, 0.4, 0.38),
    Material.GRASS: (0.08, 0.15, 0.035),
    Material.PAVED: (0.22, 0.21, 0.2),
}


def _ground_albedo_table() -> np.ndarray:
    table = np.zeros((N_MATERIALS, 3), dtype=np.float32)
    for material, rgb in _GROUND_COLOURS.items():
        table[int(material)] = rgb
    table.setflags(write=False)
    return table


_GROUND_ALBEDO = _ground_albedo_table()
"""Base colour of each ground material (rows of other materials are replaced by their part's)."""

_LUT_SIZE = 8192
_LUT_MAX = 6.0
"""The tone table covers linear values up to ``_LUT_MAX``, finely near black (square-root spacing)."""
_TONE_LUT = (
    np.power(1.0 - np.exp(-1.1 * _LUT_MAX * (np.arange(_LUT_SIZE) / _LUT_SIZE) ** 2), 1.0 / 2.2) * 255.0
).astype(np.float32)
_TONE_LUT.setflags(write=False)


@dataclass(frozen=True, eq=False)
class CameraRender:
    """A rendered camera image.

    Attributes:
        image: (H, W, 3) uint8 sRGB image.
        object_id: (H, W) int32 object seen at each pixel's first sample (``scene.SKY_OBJECT`` for sky).
    """

    image: np.ndarray
    object_id: np.ndarray


class CameraModel:
    """Pinhole camera 2 of ``rig``; ``supersample`` x ``supersample`` rays per pixel, averaged."""

    def __init__(self, rig: SensorRig, supersample: int = 1, shadows: bool = True, seed: int = 0) -> None:
        self.rig = rig
        self.supersample = supersample
        self.shadows = shadows
        self.seed = seed
        self._dirs_lidar = rig.pixel_directions_lidar(supersample).reshape(-1, 3)
        self._centre_lidar = rig.camera_centre_lidar().astype(np.float32)

    def render(
        self, scene: Scene, T_world_lidar: np.ndarray, light: Lighting, rng: np.random.Generator
    ) -> CameraRender:
        """Image seen with the LiDAR at pose ``T_world_lidar`` (4x4, world z up)."""
        R = T_world_lidar[:3, :3].astype(np.float32)
        t = T_world_lidar[:3, 3].astype(np.float32)
        dirs = rotate(self._dirs_lidar, R)
        origin = rotate(self._centre_lidar[None], R)[0] + t
        hits = scene.cast(np.broadcast_to(origin, dirs.shape), dirs)
        colour = self._shade(scene, hits, dirs, light)

        width, height = self.rig.image_size
        s = self.supersample
        linear = colour.reshape(height, s, width, s, 3)
        linear = linear[:, 0, :, 0] if s == 1 else linear.mean(axis=(1, 3))
        image = self._to_srgb8(linear * np.float32(light.exposure), rng)
        object_id = hits.object_id.reshape(height, s, width, s)[:, 0, :, 0]
        return CameraRender(image=image, object_id=object_id)

    def _to_srgb8(self, linear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exposure curve ``1 - exp(-k x)``, sRGB gamma and sensor noise, through a lookup table."""
        index = np.sqrt(np.maximum(linear, 0.0) * np.float32(1.0 / _LUT_MAX)) * np.float32(_LUT_SIZE)
        srgb = _TONE_LUT[np.minimum(index, _LUT_SIZE - 1).astype(np.int32)]
        srgb += rng.standard_normal(srgb.shape, dtype=np.float32) * np.float32(1.5)
        return np.clip(srgb + 0.5, 0, 255).astype(np.uint8)

    def _shade(self, scene: Scene, hits, dirs: np.ndarray, light: Lighting) -> np.ndarray:
        n = len(dirs)
        colour = np.empty((n, 3), dtype=np.float32)
        hit = np.flatnonzero(hits.hit)
        sky = np.flatnonzero(~hits.hit)
        colour[sky] = sky_colour(dirs[sky], light)
        if hit.size == 0:
            return colour

        material = hits.material[hit]
        point = hits.point[hit]
        normal = hits.normal[hit]
        part = hits.part[hit]
        albedo = self._albedo(scene, material, part, point, normal)

        cos_sun = dot(normal, light.sun_direction)
        lit = cos_sun > 0
        if self.shadows and lit.any():
            sunny = np.flatnonzero(lit)
            lit[sunny[scene.shadowed(point[sunny], normal[sunny], light.sun_direction)]] = False
        direct = np.where(lit, cos_sun, 0.0).astype(np.float32)[:, None] * light.sun_colour
        sky_light = light.ambient * (0.55 + 0.45 * normal[:, 2:3])
        shaded = albedo * (direct + sky_light)

        specular = SPECULAR[material]
        shiny = np.flatnonzero(specular > 0)
        if shiny.size:
            d = dirs[hit[shiny]]
            nn = normal[shiny]
            reflected = d - 2.0 * dot(d, nn)[:, None] * nn
            k = specular[shiny][:, None]
            shaded[shiny] = shaded[shiny] * (1 - k) + k * sky_colour(reflected, light)

        fade = np.exp(-hits.t[hit] / light.haze_distance).astype(np.float32)[:, None]
        colour[hit] = shaded * fade + light.horizon * (1 - fade)
        return colour

    def _albedo(
        self, scene: Scene, material: np.ndarray, part: np.ndarray, point: np.ndarray, normal: np.ndarray
    ) -> np.ndarray:
        albedo = _GROUND_ALBEDO[material]
        on_mesh = np.flatnonzero(part >= 0)
        albedo[on_mesh] = scene.parts.albedo[part[on_mesh]]
        glass = on_mesh[material[on_mesh] == Material.GLASS]
        albedo[glass] = scene.parts.albedo2[part[glass]]

        # Value noise at two scales breaks up flat colours (patches, then grain).
        u, v = surface_coordinates(point, normal)
        seed = self.seed
        amplitude = TEXTURE_NOISE[material]
        textured = np.flatnonzero(amplitude > 0.05)
        u, v = u[textured], v[textured]
        coarse = value_noise(u * np.float32(1 / 3.0), v * np.float32(1 / 3.0), seed + 11)
        fine = value_noise(u * np.float32(1 / 0.22), v * np.float32(1 / 0.22), seed + 12)
        albedo[textured] *= (1.0 + amplitude[textured] * (1.2 * (coarse - 0.5) + 0.8 * (fine - 0.5)))[:, None]

        sidewalk = material == Material.SIDEWALK
        if sidewalk.any():
            # Paving slabs: thin darker joints on a 0.6 m grid.
            x, y = point[sidewalk, 0], point[sidewalk, 1]
            joint = ((x / 0.6) % 1.0 < 0.05) | ((y / 0.6) % 1.0 < 0.05)
            albedo[sidewalk] *= np.where(joint, 0.75, 1.0)[:, None]
        facade = material == Material.FACADE
        if facade.any():
            # A darker band at each floor slab.
            p = part[facade]
            height = point[facade, 2] - scene.parts.origin[p, 2]
            floor_h = scene.parts.tex[p, 3]
            band = (height / floor_h) % 1.0 < 0.05
            albedo[facade] *= np.where(band, 0.82, 1.0)[:, None]
        return albedo
