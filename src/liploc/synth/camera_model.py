"""The left colour camera (KITTI ``image_2``): one ray per pixel (or per sub-pixel) into the scene.

Shading: per-material colours with procedural surface detail (asphalt grain and repairs, paving
slabs, grass blades and dry patches, leaves with gaps, bark, brick courses and stained plaster,
window frames and curtains, car lights, bumpers and number plates), sunlight with cast shadows that
foliage dapples, sky light dimmed where something overhangs, sky reflections and sun glints on glass
and paint, haze with distance. Then the sensor: exposure and white balance of the drive,
vignetting, a filmic tone curve, sRGB gamma and noise.
Nothing depends on the frame index; only the scene, the pose and the drive's lighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from liploc.synth.lighting import Lighting, sky_colour
from liploc.synth.materials import N_MATERIALS, SPECULAR, TEXTURE_NOISE, Material
from liploc.synth.rig import KITTI_IMAGE_SIZE, SensorRig
from liploc.synth.scene import Scene, SurfaceHits
from liploc.synth.textures import (
    blob_noise,
    cell_noise,
    cell_noise3,
    facade_windows,
    hash3,
    hash_uniform,
    surface_coordinates,
    value_noise,
)
from liploc.synth.vec3 import dot, rotate

_GROUND_COLOURS = {
    Material.ROAD: (0.1, 0.1, 0.1),
    Material.MARKING: (0.7, 0.7, 0.66),
    Material.SIDEWALK: (0.27, 0.255, 0.235),
    Material.CURB: (0.36, 0.36, 0.34),
    Material.GRASS: (0.065, 0.13, 0.03),
    Material.PAVED: (0.2, 0.19, 0.18),
}
_DRY_GRASS = np.array([0.19, 0.16, 0.07], dtype=np.float32)
_MORTAR = np.array([0.4, 0.38, 0.34], dtype=np.float32)
_WINDOW_FRAMES = np.array([[0.7, 0.7, 0.68], [0.1, 0.1, 0.1], [0.25, 0.16, 0.1]], dtype=np.float32)
_TAIL_LIGHT = np.array([0.45, 0.02, 0.02], dtype=np.float32)
_HEAD_LIGHT = np.array([0.6, 0.6, 0.58], dtype=np.float32)
_PLATE = np.array([0.7, 0.7, 0.66], dtype=np.float32)
_TRIM = np.array([0.03, 0.03, 0.03], dtype=np.float32)
_MOTTLE = (0.85, 0.3)
"""Blotches about 10 cm across on plaster and asphalt: factor ``a + b * noise``."""
_LEAF = (0.25, 0.5, 0.45)
"""Leaves inside a crown: share of the sun and of the sky light they still get (light filters
through the leaves); size of the clumps of leaves (metres)."""
_BLUR = 1.0
_GLARE = 0.04
"""Veiling glare: share of the light that the lens spreads over the whole image."""
"""Optics and demosaicing: Gaussian blur (pixels at KITTI's full size) before the sharpening."""
_IVY = np.array([0.05, 0.11, 0.03], dtype=np.float32)
_SILL = np.array([0.6, 0.58, 0.54], dtype=np.float32)
_SHUTTER = np.array([0.42, 0.42, 0.4], dtype=np.float32)
_SIGN_COLOURS = np.array(
    [[0.6, 0.05, 0.04], [0.05, 0.15, 0.5], [0.7, 0.6, 0.1], [0.05, 0.35, 0.12], [0.75, 0.75, 0.72]],
    dtype=np.float32,
)


def _ground_albedo_table() -> np.ndarray:
    table = np.zeros((N_MATERIALS, 3), dtype=np.float32)
    for material, rgb in _GROUND_COLOURS.items():
        table[int(material)] = rgb
    table.setflags(write=False)
    return table


_GROUND_ALBEDO = _ground_albedo_table()
"""Base colour of each ground material (rows of other materials are replaced by their part's)."""

_LUT_SIZE = 8192
_LUT_MAX = 8.0
"""The tone table covers linear values up to ``_LUT_MAX``, finely near black (square-root spacing)."""


_WHITE = 1.15
"""The filmic curve's output is scaled by this before clipping: bright sky and white walls clip, as on
KITTI's camera (5 % of its pixels are above 0.98)."""
_GAMMA = 1.35 / 2.2
"""Display gamma after the filmic curve: a little steeper than sRGB's 1 / 2.2, which (with the
auto exposure's key) gives the real drive's spread of brightness (5, 25, 50, 75, 95 % of pixels
at 0.06, 0.14, 0.27, 0.53, 0.98; the synthetic drives 0.05, 0.15, 0.30, 0.57, 0.87)."""


def _tone_curve(x: np.ndarray) -> np.ndarray:
    """Filmic curve (a fit of ACES's): a toe that deepens shadows, a shoulder that rolls off
    highlights; then the display gamma. Linear exposure in, display value in [0, 1] out."""
    mapped = x * (2.51 * x + 0.03) / (x * (2.43 * x + 0.59) + 0.14)
    return np.power(np.clip(mapped * _WHITE, 0.0, 1.0), _GAMMA)


_TONE_LUT = (_tone_curve(_LUT_MAX * (np.arange(_LUT_SIZE) / _LUT_SIZE) ** 2) * 255.0).astype(np.float32)
_TONE_LUT.setflags(write=False)


_KEY = 0.16
"""Mean linear brightness that auto exposure aims for (times the drive's exposure)."""

_SATURATION = 1.25
"""Colour matrix of the camera: chroma scaled by this around the luminance (Rec. 709 weights)."""


def _saturation_matrix(k: float) -> np.ndarray:
    luma = np.array([0.2126, 0.7152, 0.0722])
    return (np.outer(np.ones(3), luma) * (1.0 - k) + np.eye(3) * k).astype(np.float32)


_COLOUR_MATRIX = _saturation_matrix(_SATURATION)

_SHARPEN = 1.35
_SHARPEN_SIGMA = 2.2
"""Unsharp mask after the tone curve: amount and Gaussian sigma (pixels at KITTI's full size)."""

_NOISE_SIGMA = 1.6
"""Sensor noise, 8-bit levels (standard deviation)."""

_VIGNETTING = 0.45
"""Vignetting: relative illumination ``1 / (1 + k r^2)`` at ``r``, the tangent of the angle off axis."""


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
        width, height = rig.image_size
        K = rig.P2[:, :3]
        u = (np.arange(width) - K[0, 2]) / K[0, 0]
        v = (np.arange(height) - K[1, 2]) / K[1, 1]
        r2 = u[None, :] ** 2 + v[:, None] ** 2
        self._vignette = (1.0 / (1.0 + _VIGNETTING * r2)).astype(np.float32)[..., None]
        # Blur and sharpening radii are given in pixels of KITTI's full size: scaled with the image.
        scale = width / KITTI_IMAGE_SIZE[0]
        self._blur = _BLUR * scale if _BLUR * scale >= 0.3 else 0.0
        self._sharpen_sigma = _SHARPEN_SIGMA * scale

    def render(
        self, scene: Scene, T_world_lidar: np.ndarray, light: Lighting, rng: np.random.Generator
    ) -> CameraRender:
        """Image seen with the LiDAR at pose ``T_world_lidar`` (4x4, world z up)."""
        R = T_world_lidar[:3, :3].astype(np.float32)
        t = T_world_lidar[:3, 3].astype(np.float32)
        dirs = rotate(self._dirs_lidar, R)
        origin = rotate(self._centre_lidar[None], R)[0] + t
        hits = scene.cast(np.broadcast_to(origin, dirs.shape), dirs)
        _see_through_leaves(scene, hits, dirs, self.seed)
        colour = self._shade(scene, hits, dirs, light)

        width, height = self.rig.image_size
        s = self.supersample
        linear = colour.reshape(height, s, width, s, 3)
        linear = linear[:, 0, :, 0] if s == 1 else linear.mean(axis=(1, 3))
        linear = linear * np.asarray(light.white_balance, dtype=np.float32) * self._vignette
        if _GLARE > 0:
            linear = _veiling_glare(linear, _GLARE)
        image = self._to_srgb8(linear * np.float32(self._exposure(linear, light)), rng)
        object_id = hits.object_id.reshape(height, s, width, s)[:, 0, :, 0]
        return CameraRender(image=image, object_id=object_id)

    @staticmethod
    def _exposure(linear: np.ndarray, light: Lighting) -> float:
        """Auto exposure: the gain that brings the image's mean brightness, measured on a
        square-root scale (closer to how bright things look than the linear mean, which the sky
        and white walls would dominate), to the drive's key, within limits."""
        sample = linear[::4, ::4]
        luma = sample[..., 0] * 0.2126 + sample[..., 1] * 0.7152 + sample[..., 2] * 0.0722
        metered = float(np.mean(np.sqrt(np.maximum(luma, 0.0)))) ** 2
        gain = _KEY * light.exposure / max(metered, 1e-4)
        return float(np.clip(gain, 0.25, 8.0))

    def _to_srgb8(self, linear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The camera's processing: colour matrix (saturation), tone curve and sRGB gamma through a
        lookup table, sharpening (unsharp mask), sensor noise."""
        linear = cv2.transform(linear, _COLOUR_MATRIX)
        index = np.sqrt(np.maximum(linear, 0.0) * np.float32(1.0 / _LUT_MAX)) * np.float32(_LUT_SIZE)
        srgb = _TONE_LUT[np.minimum(index, _LUT_SIZE - 1).astype(np.int32)]
        if self._blur > 0:
            srgb = cv2.GaussianBlur(srgb, (0, 0), self._blur)
        if _SHARPEN > 0:
            blurred = cv2.GaussianBlur(srgb, (0, 0), self._sharpen_sigma)
            srgb = cv2.addWeighted(srgb, 1.0 + _SHARPEN, blurred, -_SHARPEN, 0.0)
        srgb += rng.standard_normal(srgb.shape, dtype=np.float32) * np.float32(_NOISE_SIGMA)
        return np.clip(srgb + 0.5, 0, 255).astype(np.uint8)

    def _shade(self, scene: Scene, hits: SurfaceHits, dirs: np.ndarray, light: Lighting) -> np.ndarray:
        # Shaded on the whole ray arrays (the sky is a small share of the pixels: cheaper than
        # gathering the hit rays first), the sky's colour put in at the end.
        hit = hits.hit
        material, point, normal = hits.material, hits.point, hits.normal
        surface = _Surface(scene, material, hits.part, point, normal, self.seed)
        albedo = surface.albedo

        sun = light.sun_direction
        cos_sun = np.maximum(dot(surface.normal, sun), 0.0) * surface.sunlit
        lit = (dot(normal, sun) > 0) & (cos_sun > 0)
        if self.shadows:
            sunny = np.flatnonzero(lit)
            cos_sun[sunny] *= _sun_transmission(scene, point[sunny], normal[sunny], sun, self.seed)
        cos_sun *= lit
        # Sky light from above, less where something overhangs; light bounced off the sunny ground.
        access = surface.sky_access
        if self.shadows:
            # Out of the sun, near the ground: the dark ground under cars and crowns, in corners.
            shade = np.flatnonzero((cos_sun < 0.2) & hit & (point[:, 2] < 0.6))
            access[shade] *= _sky_openness(scene, point[shade], normal[shade])
        sky_weight = (0.55 + 0.45 * normal[:, 2]) * access
        bounce = np.float32(0.08 * max(float(sun[2]), 0.0)) * (0.5 - 0.5 * normal[:, 2]) * access
        irradiance = light.ambient * sky_weight[:, None]
        irradiance += light.sun_colour * (cos_sun + bounce)[:, None]
        shaded = albedo * irradiance

        specular = SPECULAR[material]
        shiny = np.flatnonzero((specular > 0) & ~surface.matte)
        if shiny.size:
            d = dirs[shiny]
            nn = surface.normal[shiny]
            cos_view = np.abs(dot(d, nn))
            reflected = d + (2.0 * cos_view)[:, None] * nn
            f0 = specular[shiny]
            k = np.minimum(f0 + (1.0 - f0) * (1.0 - cos_view) ** 5, 0.5)[:, None]
            glint = np.clip(dot(reflected, sun), 0.0, 1.0) ** 200 * (cos_sun[shiny] > 0)
            mirror = _environment(reflected, light) + light.sun_colour * (2.0 * glint)[:, None]
            shaded[shiny] = shaded[shiny] * (1 - k) + k * mirror

        fade = np.exp(hits.t * np.float32(-1.0 / light.haze_distance))[:, None]
        haze = (0.6 * light.horizon).astype(np.float32)
        colour = (shaded - haze) * fade + haze
        sky = np.flatnonzero(~hit)
        colour[sky] = sky_colour(dirs[sky], light)
        return colour


def _environment(dirs: np.ndarray, light: Lighting) -> np.ndarray:
    """(N, 3) what a mirror sees in the unit directions ``dirs``: the sky above, fading near the
    horizon into the darker street around (facades, trees, the road), which also fills the lower
    half."""
    around = 0.12 * (float(max(light.sun_direction[2], 0.0)) * light.sun_colour + light.ambient)
    # The street around, as a blurred panorama of lighter and darker things (direction only).
    azimuth = np.arctan2(dirs[:, 1], dirs[:, 0])
    elevation = dirs[:, 2]
    things = 0.6 * value_noise(azimuth * np.float32(7.0), elevation * np.float32(9.0), light.cloud_seed + 7)
    things += 0.4 * value_noise(azimuth * np.float32(40.0), elevation * np.float32(6.0), light.cloud_seed + 8)
    open_sky = np.clip(dirs[:, 2] * 4.0 - things + 0.5, 0.0, 1.0)[:, None]
    surroundings = around * (0.3 + 1.4 * things)[:, None]
    return sky_colour(dirs, light, clouds=False) * open_sky + surroundings * (1.0 - open_sky)


def _veiling_glare(linear: np.ndarray, share: float) -> np.ndarray:
    """Light scattered in the lens: ``share`` of the image spread widely over it (computed on an
    eighth-size copy), which lifts the darks next to bright sky and walls."""
    height, width = linear.shape[:2]
    small = cv2.resize(linear, (width // 8, height // 8), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 4.0)
    halo = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(linear, 1.0 - share, halo, share, 0.0)


def _bay_start(tex: np.ndarray) -> np.ndarray:
    """Where the first window bay of a facade starts (metres along the wall), as ``facade_windows``."""
    length, spacing, margin = tex[:, 0], tex[:, 2], tex[:, 7]
    usable = np.maximum(length - 2 * margin, 0.0)
    return margin + 0.5 * (usable - np.floor(usable / spacing) * spacing)


def _see_through_leaves(scene: Scene, hits: SurfaceHits, dirs: np.ndarray, seed: int) -> None:
    """Let the camera see through the gaps of tree crowns, in place in ``hits``.

    A ray that enters a crown would cross it along a chord of about ``2 R cos(angle to the
    normal)`` (R: the crown's radius, kept in its part); the shorter that way through the leaves,
    the likelier it passes (a gap at every leaf cell whose noise is under ``exp(-chord / 2.5 m)``),
    and then it sees what lies behind the crown: the sky or another surface. So crowns get lacy
    edges with the sky showing through, and stay solid in the middle.
    """
    leafy = np.flatnonzero(hits.material == Material.FOLIAGE)
    if leafy.size == 0:
        return
    radius = scene.parts.tex[hits.part[leafy], 0]
    d = dirs[leafy]
    chord = np.float32(2.0) * radius * np.abs(dot(hits.normal[leafy], d))
    chance = np.where(radius > 0, np.exp(-chord / np.float32(2.5)), np.float32(0.0))
    gap = cell_noise(hits.point[leafy], 0.06, seed + 45) < chance
    through = leafy[gap]
    if through.size == 0:
        return
    step = chord[gap] + np.float32(0.05)
    behind = scene.cast(hits.point[through] + dirs[through] * step[:, None], dirs[through])
    hits.t[through] = hits.t[through] + step + behind.t
    for name in ("point", "normal", "material", "part", "object_id"):
        getattr(hits, name)[through] = getattr(behind, name)


def _sun_transmission(
    scene: Scene, points: np.ndarray, normals: np.ndarray, sun: np.ndarray, seed: int
) -> np.ndarray:
    """(N,) share of the sun that reaches each point: 0 behind solid things, sunflecks through the
    gaps between leaves where a crown or hedge is in the way, 1 in the open."""
    origins = points + normals * np.float32(0.03)
    dirs = np.broadcast_to(sun.astype(np.float32), points.shape)
    t, face = scene.first_hit(origins, dirs)
    transmitted = (face < 0).astype(np.float32)
    material = scene.parts.material[scene.mesh.face_part[np.maximum(face, 0)]]
    leafy = np.flatnonzero((face >= 0) & ((material == Material.FOLIAGE) | (material == Material.HEDGE)))
    if leafy.size:
        where = origins[leafy] + dirs[leafy] * t[leafy, None]
        # Round, soft-edged sunflecks (the sun's disc blurs them) from the gaps in the leaves.
        gaps = blob_noise(where, 0.22, seed + 61)
        transmitted[leafy] = np.clip((gaps - 0.54) * 5.0, 0.0, 1.0)
    return transmitted


def _sky_openness(scene: Scene, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,) 1 where the sky above a point (towards its normal, tilted up) is open, 0.4 where an
    overhang, a crown or a car hides it: the darker ground under trees and cars, in corners."""
    up = normals + np.array([0.0, 0.0, 1.02], dtype=np.float32)
    up /= np.sqrt(dot(up, up))[:, None]
    origins = points + normals * np.float32(0.03)
    return np.where(scene.occluded(origins, up), np.float32(0.4), np.float32(1.0))


class _Surface:
    """Albedo and shading normal of hit points with their procedural detail.

    Attributes:
        albedo: (M, 3) float32 colour.
        normal: (M, 3) float32 shading normal (leaves turn every way).
        sunlit: (M,) float32 share of the direct sun not hidden inside the surface (leaf gaps).
        sky_access: (M,) float32 share of the sky light that reaches in.
        matte: (M,) bool, True where a shiny material is covered (a shutter in a window).
    """

    def __init__(
        self,
        scene: Scene,
        material: np.ndarray,
        part: np.ndarray,
        point: np.ndarray,
        normal: np.ndarray,
        seed: int,
    ) -> None:
        self.scene = scene
        self.material = material
        self.part = part
        self.point = point
        self.seed = seed
        m = len(material)
        albedo = _GROUND_ALBEDO[material]
        on_mesh = np.flatnonzero(part >= 0)
        albedo[on_mesh] = scene.parts.albedo[part[on_mesh]]
        glass = on_mesh[material[on_mesh] == Material.GLASS]
        albedo[glass] = scene.parts.albedo2[part[glass]]
        self.albedo = albedo
        self._geometric = normal
        self.normal = normal
        self.sunlit = np.ones(m, dtype=np.float32)
        self.sky_access = np.ones(m, dtype=np.float32)
        self.matte = np.zeros(m, dtype=bool)

        # Which points get which detail: one pass to group them by material.
        order = np.argsort(material, kind="stable")
        bounds = np.searchsorted(material[order], np.arange(N_MATERIALS + 1))
        groups = {
            k: order[bounds[k] : bounds[k + 1]] for k in range(N_MATERIALS) if bounds[k + 1] > bounds[k]
        }

        def get(*materials: Material) -> np.ndarray:
            found = [groups[int(x)] for x in materials if int(x) in groups]
            return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

        self._asphalt(get(Material.ROAD, Material.PAVED))
        self._markings(get(Material.MARKING))
        self._sidewalk(get(Material.SIDEWALK, Material.CURB))
        self._grass(get(Material.GRASS))
        self._leaves(get(Material.FOLIAGE), 0.06)
        self._leaves(get(Material.HEDGE), 0.045)
        self._facade(get(Material.FACADE))
        self._windows(get(Material.GLASS))
        self._car_paint(get(Material.CAR_PAINT))
        self._car_glass(get(Material.CAR_GLASS))
        self._roof(get(Material.ROOF))
        self._generic(
            get(Material.TRUNK, Material.WALL, Material.POLE, Material.SIGN, Material.LAMP, Material.FENCE)
        )

    def _scale(self, idx: np.ndarray, factor: np.ndarray) -> None:
        self.albedo[idx] *= factor[:, None]

    def _asphalt(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        p = self.point[idx]
        x, y = p[:, 0], p[:, 1]
        grain = cell_noise(p, 0.04, self.seed + 21)
        patches = value_noise(x * np.float32(1 / 1.3), y * np.float32(1 / 1.3), self.seed + 22)
        repairs = value_noise(x * np.float32(1 / 6.0), y * np.float32(1 / 6.0), self.seed + 23)
        factor = (0.88 + 0.24 * grain) * (0.85 + 0.3 * patches)
        factor *= np.where(repairs > 0.7, np.float32(0.72), np.float32(1.0))
        # Cracks sealed with tar: thin dark lines meandering over the older stretches.
        lines = value_noise(x * np.float32(1 / 1.2), y * np.float32(1 / 1.2), self.seed + 28)
        old = value_noise(x * np.float32(1 / 15.0), y * np.float32(1 / 15.0), self.seed + 29) > 0.45
        factor *= np.where(old & (np.abs(lines - 0.5) < 0.006), np.float32(0.45), np.float32(1.0))
        self._scale(idx, factor)

    def _markings(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        p = self.point[idx]
        wear = value_noise(p[:, 0] * np.float32(1 / 0.35), p[:, 1] * np.float32(1 / 0.35), self.seed + 24)
        self._scale(idx, 0.7 + 0.35 * wear)

    def _sidewalk(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        p = self.point[idx]
        x, y = p[:, 0], p[:, 1]
        # Paving slabs: thin darker joints on a 0.6 m grid, each slab a little different.
        joint = ((x / 0.6) % 1.0 < 0.05) | ((y / 0.6) % 1.0 < 0.05)
        slab = hash_uniform(np.floor(x / 0.6), np.floor(y / 0.6), self.seed + 25)
        grain = cell_noise(p, 0.03, self.seed + 26)
        stains = value_noise(x * np.float32(1 / 2.5), y * np.float32(1 / 2.5), self.seed + 27)
        factor = (
            np.where(joint, 0.7, 1.0) * (0.9 + 0.2 * slab) * (0.92 + 0.16 * grain) * (0.85 + 0.3 * stains)
        )
        self._scale(idx, factor.astype(np.float32))

    def _grass(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        p = self.point[idx]
        x, y = p[:, 0], p[:, 1]
        # Dry, yellowish patches in the lawn; clumps; single blades.
        dry = np.clip(
            (value_noise(x * np.float32(1 / 4.0), y * np.float32(1 / 4.0), self.seed + 31) - 0.4) * 2.2, 0, 1
        )
        self.albedo[idx] = self.albedo[idx] * (1 - dry[:, None]) + _DRY_GRASS * dry[:, None]
        clumps = value_noise(x * np.float32(1 / 0.45), y * np.float32(1 / 0.45), self.seed + 32)
        blades = cell_noise(p, 0.05, self.seed + 33)
        self._scale(idx, (0.75 + 0.5 * clumps) * (0.7 + 0.6 * blades))

    def _leaves(self, idx: np.ndarray, size: float) -> None:
        """Leaves: cells of ``size`` metres, each turned its own way and a little differently coloured,
        in clumps with dark gaps between them (the shaded inside of the crown)."""
        if not idx.size:
            return
        p = self.point[idx]
        n = self.normal[idx]
        a, b, c = cell_noise3(p, size, self.seed + 41)
        u, v = surface_coordinates(p, n)
        clumps = value_noise(u * np.float32(1 / _LEAF[2]), v * np.float32(1 / _LEAF[2]), self.seed + 44)
        tilted = n + np.float32(1.3) * np.column_stack([a - 0.5, b - 0.5, c - 0.35])
        tilted /= np.sqrt(dot(tilted, tilted))[:, None]
        if self.normal is self._geometric:
            self.normal = self.normal.copy()  # the geometric normal stays for shadows and sky light
        self.normal[idx] = tilted
        # Each leaf is either on the outside of its clump (in the light) or deeper inside (shaded):
        # more outside leaves in the middle of a clump, more shade between clumps.
        outside = (c < 0.15 + 0.75 * clumps).astype(np.float32)
        self.sunlit[idx] = _LEAF[0] + (1 - _LEAF[0]) * outside  # light filters through the leaves
        self.sky_access[idx] = _LEAF[1] + (1 - _LEAF[1]) * outside
        tint = np.column_stack([1.0 + 0.6 * (a - 0.5), 1.0 + 0.25 * (b - 0.5), np.ones_like(a)])
        self.albedo[idx] *= tint * (0.6 + 0.8 * b)[:, None]

    def _facade_coordinates(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = self.scene.parts
        p = self.part[idx]
        rel = self.point[idx, :2] - parts.origin[p, :2]
        along = np.einsum("nc,nc->n", rel, parts.tangent[p])
        height = self.point[idx, 2] - parts.origin[p, 2]
        return p, along, height

    def _facade(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        parts = self.scene.parts
        p, along, height = self._facade_coordinates(idx)
        tex = parts.tex[p]
        floor_h = tex[:, 3]
        albedo = self.albedo[idx]
        # Brick walls (reddish colours): courses of 7.5 cm, staggered bricks, mortar joints.
        brick = np.flatnonzero(albedo[:, 0] > 1.8 * albedo[:, 1])
        if brick.size:
            b_along, b_height = along[brick], height[brick]
            row = np.floor(b_height / 0.075)
            shifted = b_along + 0.12 * (row % 2)
            joint = ((b_height / 0.075) % 1.0 < 0.16) | ((shifted / 0.24) % 1.0 < 0.05)
            tone = hash3(row, np.floor(shifted / 0.24), p[brick], self.seed + 51)
            albedo[brick] *= (0.85 + 0.3 * tone)[:, None]
            albedo[brick[joint]] = _MORTAR
        # Plaster: weather stains running down, a darker plinth, a band at each floor slab.
        stains = value_noise(along * np.float32(1 / 1.5), height * np.float32(1 / 5.0), self.seed + 52)
        dirt = value_noise(along * np.float32(1 / 0.35), height * np.float32(1 / 0.6), self.seed + 56)
        grain = cell_noise(self.point[idx], 0.03, self.seed + 57)
        band = (height / floor_h) % 1.0 < 0.05
        mottle = blob_noise(self.point[idx], 0.1, self.seed + 65)
        factor = (0.8 + 0.4 * stains) * (0.88 + 0.24 * dirt) * (0.92 + 0.16 * grain)
        factor *= _MOTTLE[0] + _MOTTLE[1] * mottle
        factor *= np.where(band, 0.8, 1.0)
        # A plinth of stone slabs at the foot of the wall, and a drainpipe at each end.
        plinth = height < 0.6
        slab = ((along / 0.8 + 0.5 * (np.floor(height / 0.3) % 2)) % 1.0 < 0.03) | (
            (height / 0.3) % 1.0 < 0.08
        )
        factor *= np.where(plinth, np.where(slab, 0.35, 0.6), 1.0)
        pipe = (np.abs(along - 0.25) < 0.05) | (np.abs(along - (tex[:, 0] - 0.25)) < 0.05)
        factor *= np.where(pipe & ~plinth, 0.55, 1.0)
        albedo *= factor[:, None].astype(np.float32)
        # Window frames around the glass, in one colour per building; a light sill under each.
        frame = facade_windows(along, height, tex, grow=0.07)
        sill = ~frame & facade_windows(along, height + 0.1, tex, grow=0.1)
        if frame.any():
            kind = hash_uniform(parts.object_id[p[frame]], np.zeros(frame.sum()), self.seed + 53) * 3
            albedo[frame] = _WINDOW_FRAMES[np.minimum(kind.astype(int), 2)]
        albedo[sill] = _SILL
        # Shop signs over the shop windows: a coloured board with darker lettering.
        board = (tex[:, 6] > 0) & (height > floor_h - 0.65) & (height < floor_h - 0.2)
        board &= np.abs(((along - _bay_start(tex)) / tex[:, 2]) % 1.0 - 0.5) < 0.45
        if board.any():
            b_along, b_height, b_part = along[board], height[board], p[board]
            bay = np.floor((b_along - _bay_start(tex[board])) / tex[board, 2])
            pick = hash3(bay, b_part, np.zeros_like(bay), self.seed + 58) * len(_SIGN_COLOURS)
            colour = _SIGN_COLOURS[pick.astype(int)]
            letters = hash3(np.floor(b_along / 0.22), np.floor(b_height / 0.18), b_part, self.seed + 59)
            top = floor_h[board]
            ink = (letters < 0.45) & (b_height > top - 0.55) & (b_height < top - 0.3)
            colour[ink] *= 0.25
            albedo[board] = colour
        self.albedo[idx] = albedo
        # Ivy climbing some buildings from the ground: thinning out upwards, with ragged edges.
        overgrown = hash_uniform(parts.object_id[p], np.full(len(p), 2), self.seed + 60) < 0.18
        overgrown = np.flatnonzero(overgrown & (height < 7.0) & ~frame)
        if overgrown.size:
            o_along, o_height = along[overgrown], height[overgrown]
            reach = value_noise(o_along * np.float32(1 / 2.0), np.zeros_like(o_along), self.seed + 62) * 6.0
            patch = value_noise(o_along * np.float32(1 / 1.2), o_height * np.float32(1 / 1.2), self.seed + 63)
            ragged = cell_noise(self.point[idx[overgrown]], 0.05, self.seed + 64)
            edge = (reach - o_height) / 1.5 + 0.5 * (patch - 0.5)
            ivy = idx[overgrown[edge > 0.6 * ragged]]
            if ivy.size:
                self.albedo[ivy] = _IVY
                self._leaves(ivy, 0.05)

    def _windows(self, idx: np.ndarray) -> None:
        """Window glass: some dark, some with curtains or blinds, a bar across the middle of some."""
        idx = idx[self.part[idx] >= 0]
        if not idx.size:
            return
        parts = self.scene.parts
        p, along, height = self._facade_coordinates(idx)
        tex = parts.tex[p]
        column = np.floor(along / tex[:, 2])
        floor = np.floor(height / tex[:, 3])
        h = hash3(column, floor, p, self.seed + 54)
        # Curtains (light, in folds) behind a quarter of the windows; the rest dark rooms.
        folds = 0.75 + 0.25 * np.sin(along * np.float32(2 * np.pi / 0.14))
        curtains = np.where(h > 0.75, (2.0 + 10.0 * (h - 0.75)) * folds, 0.5 + 0.8 * h)
        self._scale(idx, curtains.astype(np.float32))
        # Roller shutters let down part of the way in some windows: grey slats from the top.
        from_top = 1.0 - ((height / tex[:, 3]) % 1.0 - 0.3) / np.maximum(tex[:, 5], 1e-3)
        lowered = np.where(h < 0.3, 0.15 + 2.5 * h, 0.0)
        shutter = (from_top >= 0) & (from_top < lowered) & (floor >= 1)
        if shutter.any():
            slats = (height[shutter] / 0.05) % 1.0 < 0.3
            self.albedo[idx[shutter]] = _SHUTTER * np.where(slats, 0.7, 1.0)[:, None]
            self.matte[idx[shutter]] = True
        # Glazing bars: a cross in the middle of every upper-floor window, in the frame's colour.
        fu = np.abs(((along - _bay_start(tex)) / tex[:, 2]) % 1.0 - 0.5)  # 0 in the middle of a bay
        fv = (height / tex[:, 3]) % 1.0 - (0.3 + 0.5 * tex[:, 5])
        bars = ((fu < 0.025) | (np.abs(fv) < 0.03)) & (floor >= np.where(tex[:, 6] > 0, 1.0, 0.0))
        if bars.any():
            kind = hash_uniform(parts.object_id[p[bars]], np.zeros(bars.sum()), self.seed + 53) * 3
            self.albedo[idx[bars]] = _WINDOW_FRAMES[np.minimum(kind.astype(int), 2)]

    def _car_paint(self, idx: np.ndarray) -> None:
        """Lights, number plates, bumpers and the dark sill of a car body (its frame is in the part)."""
        if not idx.size:
            return
        parts = self.scene.parts
        p = self.part[idx]
        tangent = parts.tangent[p]
        rel = self.point[idx, :2] - parts.origin[p, :2]
        along = rel[:, 0] * tangent[:, 0] + rel[:, 1] * tangent[:, 1]
        across = np.abs(rel[:, 1] * tangent[:, 0] - rel[:, 0] * tangent[:, 1])
        z = self.point[idx, 2]
        length, width, body_top = parts.tex[p, 0], parts.tex[p, 1], parts.tex[p, 2]
        if not np.any(length > 0):
            return
        front = along > 0.5 * length - 0.03
        back = along < -0.5 * length + 0.03
        ends = front | back
        sides = ~ends & (across > 0.5 * width - 0.03)
        lamps = (z > body_top - 0.32) & (z < body_top - 0.1) & (across > 0.5 * width - 0.42)
        plate = ends & (across < 0.26) & (z > 0.42) & (z < 0.55)
        bumper = ends & (z < 0.5) & ~plate
        sill = ~ends & (z < 0.42)
        # Wheel arches over the wheels, door seams, a crease along the flank.
        wheel = np.minimum(np.abs(along - 0.32 * length), np.abs(along + 0.32 * length))
        arch = sides & (wheel**2 + (z - 0.33) ** 2 < 0.43**2)
        doors = parts.tex[p, 6] + np.where(parts.tex[p, 4] > 0, 0.0, 0.5) * parts.tex[p, 5]
        seam = sides & (z > 0.4) & ((np.abs(along - doors) < 0.012) | (np.abs(along - doors + 1.05) < 0.012))
        crease = sides & (np.abs(z - (body_top - 0.17)) < 0.025)
        albedo = self.albedo[idx]
        albedo[crease] *= 0.7
        albedo[seam] *= 0.35
        albedo[sill | bumper | arch] = _TRIM
        albedo[plate] = _PLATE
        albedo[back & lamps] = _TAIL_LIGHT
        albedo[front & lamps] = _HEAD_LIGHT
        self.albedo[idx] = albedo

    def _car_glass(self, idx: np.ndarray) -> None:
        """Window pillars in the paint colour: the front and rear ends of the cabin, and the one
        between the doors."""
        parts = self.scene.parts
        idx = idx[parts.tex[self.part[idx], 0] > 0]
        if not idx.size:
            return
        p = self.part[idx]
        tangent = parts.tangent[p]
        rel = self.point[idx, :2] - parts.origin[p, :2]
        along = rel[:, 0] * tangent[:, 0] + rel[:, 1] * tangent[:, 1] - parts.tex[p, 6]
        half = 0.5 * parts.tex[p, 5]
        z = self.point[idx, 2]
        pillar = (np.abs(along) < 0.05) | (np.abs(along) > half - 0.1)
        pillar |= z < parts.tex[p, 2] + 0.06  # the waist rail under the windows
        self.albedo[idx[pillar]] = parts.albedo2[p[pillar]]
        self.matte[idx[pillar]] = True

    def _roof(self, idx: np.ndarray) -> None:
        if not idx.size:
            return
        p = self.point[idx]
        rows = (p[:, 2] / 0.3) % 1.0 < 0.15
        self._scale(
            idx,
            np.where(rows, 0.75, 1.0).astype(np.float32) * (0.85 + 0.3 * cell_noise(p, 0.3, self.seed + 55)),
        )

    def _generic(self, idx: np.ndarray) -> None:
        """Value noise at two scales (patches, then grain) for the other materials."""
        if not idx.size:
            return
        amplitude = TEXTURE_NOISE[self.material[idx]]
        u, v = surface_coordinates(self.point[idx], self.normal[idx])
        coarse = value_noise(u * np.float32(1 / 3.0), v * np.float32(1 / 3.0), self.seed + 11)
        fine = value_noise(u * np.float32(1 / 0.22), v * np.float32(1 / 0.22), self.seed + 12)
        grain = cell_noise(self.point[idx], 0.04, self.seed + 13)
        self._scale(idx, 1.0 + amplitude * (1.2 * (coarse - 0.5) + 0.8 * (fine - 0.5) + 0.8 * (grain - 0.5)))
