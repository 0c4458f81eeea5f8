"""Surface materials of the synthetic towns and what each means to the camera and the LiDAR.

A material is a small integer stored per triangle (through its part) or decided per point for the
analytic ground. The tables are indexed by the material number and read-only.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Material(IntEnum):
    """What a ray hit. ``SKY`` means no hit."""

    SKY = 0
    ROAD = 1
    MARKING = 2
    SIDEWALK = 3
    CURB = 4
    GRASS = 5
    PAVED = 6
    FACADE = 7
    GLASS = 8
    ROOF = 9
    TRUNK = 10
    FOLIAGE = 11
    HEDGE = 12
    POLE = 13
    SIGN = 14
    CAR_PAINT = 15
    CAR_GLASS = 16
    TYRE = 17
    WALL = 18
    LAMP = 19
    FENCE = 20


N_MATERIALS = len(Material)


def _table(values: dict[Material, float], default: float) -> np.ndarray:
    out = np.full(N_MATERIALS, default, dtype=np.float32)
    for material, value in values.items():
        out[int(material)] = value
    out.setflags(write=False)
    return out


LIDAR_REFLECTIVITY = _table(
    {
        Material.ROAD: 0.2,
        Material.MARKING: 0.75,  # retroreflective paint
        Material.SIDEWALK: 0.33,
        Material.CURB: 0.36,
        Material.GRASS: 0.45,
        Material.PAVED: 0.27,
        Material.GLASS: 0.08,
        Material.ROOF: 0.2,
        Material.TRUNK: 0.3,
        Material.FOLIAGE: 0.45,
        Material.HEDGE: 0.45,
        Material.POLE: 0.35,
        Material.SIGN: 0.95,  # retroreflective sheeting
        Material.CAR_GLASS: 0.06,
        Material.TYRE: 0.04,
        Material.WALL: 0.3,
        Material.LAMP: 0.5,
        Material.FENCE: 0.35,
    },
    default=0.3,
)
"""Reflectance in [0, 1] at normal incidence; facades and car paint also scale with their colour."""

LIDAR_DROPOUT = _table(
    {Material.GLASS: 0.55, Material.CAR_GLASS: 0.5, Material.FOLIAGE: 0.12, Material.TYRE: 0.2},
    default=0.004,
)
"""Probability that a beam hitting the material gives no return (glass, dark rubber, leaves)."""

LIDAR_PENETRATION_M = _table({Material.FOLIAGE: 0.35, Material.HEDGE: 0.15}, default=0.0)
"""Scale of the extra depth of returns from vegetation (beams enter the crown before returning)."""

SPECULAR = _table({Material.GLASS: 0.08, Material.CAR_GLASS: 0.1, Material.CAR_PAINT: 0.04}, default=0.0)
"""Share of the camera colour that is the sky reflected about the surface normal, looking straight
at the surface; more at grazing angles (Schlick's approximation of Fresnel's equations)."""

TEXTURE_NOISE = _table(
    {
        Material.ROAD: 0.18,
        Material.SIDEWALK: 0.12,
        Material.GRASS: 0.35,
        Material.PAVED: 0.15,
        Material.FACADE: 0.07,
        Material.ROOF: 0.12,
        Material.TRUNK: 0.25,
        Material.FOLIAGE: 0.45,
        Material.HEDGE: 0.45,
        Material.WALL: 0.12,
        Material.FENCE: 0.1,
    },
    default=0.03,
)
"""Relative amplitude of the fine value-noise that breaks up flat colours."""

GROUND_MATERIALS = frozenset(
    {Material.ROAD, Material.MARKING, Material.SIDEWALK, Material.CURB, Material.GRASS, Material.PAVED}
)
