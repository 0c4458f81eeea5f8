"""Procedural towns: streets, then buildings, trees, hedges, walls, poles and signs along them.

Every street side belongs to a district (terraced houses, apartment blocks, shops, industry, park)
whose ranges of frontage, setback, gap, depth and height differ, so that places differ by their 3D
layout while the small set of styles and colours repeats across the town (the task is not trivial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from liploc.synth.cars import ParkingSlots, parking_slots
from liploc.synth.ground import GroundMap
from liploc.synth.materials import Material
from liploc.synth.meshes import (
    BOX_FACE_GROUPS,
    GABLE_FACE_GROUPS,
    MeshBuilder,
    TriangleMesh,
    box,
    cylinder_between,
    gable_roof,
    icosphere,
    rectangle_corners,
    vertical_cylinder,
)
from liploc.synth.streets import StreetNetwork, grid_network, path_network
from liploc.synth.textures import hash_uniform

_RASTER_M = 1.0
_CLUMP = icosphere(0)
"""Shape of the small clumps of leaves that bulge out of a tree crown (20 faces)."""


@dataclass(frozen=True)
class DistrictStyle:
    """Ranges the buildings of one kind of street side are drawn from (metres)."""

    name: str
    weight: float
    frontage: tuple[float, float]
    gap: tuple[float, float]
    gap_zero: float
    setback: tuple[float, float]
    depth: tuple[float, float]
    floors: tuple[int, int]
    floor_height: tuple[float, float]
    gable: float
    hedge: float
    wall: float
    yard_trees: float
    shopfront: float
    palette: tuple[tuple[float, float, float], ...]
    fence: float = 0.0
    """Share of the plots with neither hedge nor wall that get a garden fence."""


_PLASTER = ((0.72, 0.68, 0.58), (0.75, 0.7, 0.5), (0.62, 0.6, 0.56), (0.7, 0.55, 0.42), (0.55, 0.6, 0.58))
_BRICK = ((0.42, 0.18, 0.12), (0.32, 0.14, 0.1), (0.5, 0.32, 0.22))
_CONCRETE = ((0.42, 0.42, 0.4), (0.5, 0.48, 0.44), (0.32, 0.33, 0.34))
_METAL = ((0.45, 0.47, 0.5), (0.3, 0.34, 0.38), (0.55, 0.52, 0.45))

STYLES = (
    DistrictStyle(
        name="houses", weight=0.3, frontage=(9, 15), gap=(2, 7), gap_zero=0.1, setback=(1.0, 4.0),
        depth=(8, 12), floors=(1, 2), floor_height=(2.8, 3.1), gable=0.8, hedge=0.5, wall=0.1,
        yard_trees=0.6, shopfront=0.0, palette=_PLASTER + _BRICK[:1], fence=0.7,
    ),
    DistrictStyle(
        name="apartments", weight=0.26, frontage=(14, 30), gap=(1, 6), gap_zero=0.55, setback=(0, 5.0),
        depth=(12, 18), floors=(3, 7), floor_height=(2.9, 3.2), gable=0.15, hedge=0.2, wall=0.1,
        yard_trees=0.45, shopfront=0.15, palette=_PLASTER + _BRICK + _CONCRETE[:1], fence=0.4,
    ),
    DistrictStyle(
        name="shops", weight=0.14, frontage=(7, 14), gap=(0.5, 2), gap_zero=0.75, setback=(0, 1),
        depth=(10, 16), floors=(2, 4), floor_height=(3.0, 3.4), gable=0.15, hedge=0.0, wall=0.0,
        yard_trees=0.05, shopfront=0.9, palette=_PLASTER + _BRICK,
    ),
    DistrictStyle(
        name="industrial", weight=0.12, frontage=(25, 55), gap=(4, 12), gap_zero=0.0, setback=(3, 10),
        depth=(18, 35), floors=(1, 2), floor_height=(4.0, 6.0), gable=0.0, hedge=0.1, wall=0.7,
        yard_trees=0.15, shopfront=0.0, palette=_CONCRETE + _METAL, fence=0.8,
    ),
    DistrictStyle(
        name="park", weight=0.12, frontage=(0, 0), gap=(0, 0), gap_zero=0.0, setback=(0, 0),
        depth=(0, 0), floors=(0, 0), floor_height=(0, 0), gable=0.0, hedge=0.4, wall=0.0,
        yard_trees=1.0, shopfront=0.0, palette=(),
    ),
)  # fmt: skip

_FOLIAGE = np.array([[0.07, 0.16, 0.04], [0.1, 0.2, 0.05], [0.05, 0.12, 0.05], [0.12, 0.18, 0.06]])
_ROOF_TILES = ((0.4, 0.1, 0.06), (0.28, 0.08, 0.05), (0.12, 0.12, 0.13), (0.25, 0.17, 0.12))


@dataclass(frozen=True, eq=False)
class Town:
    """A generated town: streets, analytic ground, static mesh and kerbside parking slots.

    Attributes:
        seed: town seed.
        streets: street network.
        ground: ground lookups.
        mesh: everything static (buildings, vegetation, street furniture).
        slots: parking slots (cars in them are drawn per drive).
        counts: number of things placed, by kind.
    """

    seed: int
    streets: StreetNetwork
    ground: GroundMap
    mesh: TriangleMesh
    slots: ParkingSlots
    counts: dict[str, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) of the street nodes."""
        lo = self.streets.nodes.min(axis=0)
        hi = self.streets.nodes.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def build_grid_town(seed: int, blocks: tuple[int, int], held_out_columns: int = 0) -> Town:
    """A town on a perturbed grid of ``blocks`` (x, y) blocks; see ``streets.grid_network``."""
    rng = np.random.default_rng([seed, 1])
    return _populate(grid_network(rng, blocks, held_out_columns), seed)


def build_town_along_path(seed: int, street_xy: np.ndarray) -> Town:
    """A town whose streets follow the polyline ``street_xy`` (a trajectory moved to the centre line)."""
    rng = np.random.default_rng([seed, 1])
    return _populate(path_network(street_xy, rng), seed)


class _Raster:
    """A 1 m raster over the town used while placing things (clearance from streets, occupancy)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, fill: float) -> None:
        self.origin = lo
        self.shape = tuple(np.ceil((hi - lo) / _RASTER_M).astype(int))
        self.values = np.full(self.shape, fill, dtype=np.float32)

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ij = np.floor((xy - self.origin) / _RASTER_M).astype(np.int64)
        return np.clip(ij[:, 0], 0, self.shape[0] - 1), np.clip(ij[:, 1], 0, self.shape[1] - 1)

    def sample(self, xy: np.ndarray) -> np.ndarray:
        return self.values[self.cells(xy)]

    def centres_in_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        i0, j0 = np.clip(np.floor((lo - self.origin) / _RASTER_M).astype(int), 0, self.shape)
        i1, j1 = np.clip(np.ceil((hi - self.origin) / _RASTER_M).astype(int), 0, self.shape)
        xs = self.origin[0] + (np.arange(i0, i1) + 0.5) * _RASTER_M
        ys = self.origin[1] + (np.arange(j0, j1) + 0.5) * _RASTER_M
        grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)
        return (slice(i0, i1), slice(j0, j1)), grid


def _inside_rectangle(points: np.ndarray, corners: np.ndarray, margin: float) -> np.ndarray:
    origin = corners[0]
    e1 = corners[1] - origin
    e2 = corners[3] - origin
    l1 = np.linalg.norm(e1)
    l2 = np.linalg.norm(e2)
    rel = points - origin
    a = (rel[:, 0] * e1[0] + rel[:, 1] * e1[1]) / l1
    b = (rel[:, 0] * e2[0] + rel[:, 1] * e2[1]) / l2
    return (a > -margin) & (a < l1 + margin) & (b > -margin) & (b < l2 + margin)


@dataclass
class _Placer:
    """Keeps objects off the streets and off each other."""

    ground: GroundMap
    occupied: _Raster

    def kerb_clearance(self, xy: np.ndarray) -> np.ndarray:
        """Distance of each point beyond the outer edge of the nearest street's sidewalk."""
        sample = self.ground.locate(xy)
        sidewalk = self.ground.streets.sidewalk[np.maximum(sample.segment, 0)]
        return np.where(sample.segment >= 0, sample.clearance - sidewalk, 1e6)

    def rectangle_free(self, corners: np.ndarray, margin: float = 0.3, kerb: float = 0.0) -> bool:
        """True when the rectangle stays ``kerb`` metres off sidewalks and ``margin`` off other things."""
        lo = corners.min(axis=0) - margin
        hi = corners.max(axis=0) + margin
        _, grid = self.occupied.centres_in_box(lo, hi)
        pts = grid.reshape(-1, 2)
        inside = _inside_rectangle(pts, corners, margin)
        edges = 0.5 * (corners + np.roll(corners, -1, axis=0))
        samples = np.vstack([pts[inside], corners, edges])
        if np.any(self.kerb_clearance(samples) < kerb - 0.05):
            return False
        return not np.any(self.occupied.sample(samples) > 0)

    def occupy(self, corners: np.ndarray, margin: float = 0.4) -> None:
        window, grid = self.occupied.centres_in_box(
            corners.min(axis=0) - margin, corners.max(axis=0) + margin
        )
        if grid.size == 0:
            return
        inside = _inside_rectangle(grid.reshape(-1, 2), corners, margin).reshape(grid.shape[:2])
        self.occupied.values[window] = np.maximum(self.occupied.values[window], inside.astype(np.float32))

    def disc_free(self, xy: np.ndarray, radius: float) -> bool:
        """A quicker ``point_free`` for round things: the centre and four points on the rim stay
        off sidewalks and off everything placed."""
        ring = xy + radius * np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        if np.any(self.occupied.sample(ring) > 0):
            return False
        return not np.any(self.kerb_clearance(ring) < 0.15)

    def point_free(self, xy: np.ndarray, radius: float) -> bool:
        corners = rectangle_corners(xy[0], xy[1], 0.0, 2 * radius, 2 * radius)
        return self.rectangle_free(corners, margin=0.1, kerb=0.2)


@dataclass(frozen=True)
class _Scene:
    """What every placing step of a town shares: the mesh being built, the streets, the occupancy,
    the counts by kind, the unit sphere of crowns and shrubs, and the town seed."""

    builder: MeshBuilder
    streets: StreetNetwork
    placer: _Placer
    counts: dict[str, int]
    sphere: tuple[np.ndarray, np.ndarray]
    seed: int

    @property
    def ground(self) -> GroundMap:
        """The ground lookups (street, sidewalk or verge of each point)."""
        return self.placer.ground

    def kerbside(self, e: int, side: float) -> _Kerbside:
        """The left (``side`` 1) or right (-1) side of street segment ``e``."""
        streets = self.streets
        u = streets.directions[e]
        return _Kerbside(
            self,
            a=streets.starts[e],
            u=u,
            n=np.array([-u[1], u[0]]) * side,
            yaw=float(np.arctan2(u[1], u[0])),
            kerb=float(streets.half_width[e] + streets.sidewalk[e]),
            length=float(streets.lengths[e]),
        )


@dataclass(frozen=True)
class _Kerbside:
    """One side of a street segment, where plots front it: start ``a``, direction ``u``, normal
    ``n`` pointing away from the street, heading ``yaw``, distance ``kerb`` from the centre line
    to the outer edge of the sidewalk, and the segment's ``length``."""

    scene: _Scene
    a: np.ndarray
    u: np.ndarray
    n: np.ndarray
    yaw: float
    kerb: float
    length: float

    def place_box(
        self,
        kind: str,
        corners: np.ndarray,
        height: float,
        margin: float,
        material: Material,
        colour: tuple[float, float, float] | np.ndarray,
        **part: Any,
    ) -> None:
        """A box of one part on ``corners``, ``height`` tall, counted as ``kind``, where it stays
        ``margin`` off everything placed (else nothing: not even an object number is used)."""
        builder, placer = self.scene.builder, self.scene.placer
        if not placer.rectangle_free(corners, margin=margin):
            return
        obj = builder.new_object()
        part_id = builder.add_part(material, colour, obj, **part)
        v, f = box(corners, 0.0, height)
        builder.add(v, f, part_id)
        placer.occupy(corners, margin=margin)
        self.scene.counts[kind] += 1


def _populate(streets: StreetNetwork, seed: int) -> Town:
    ground = GroundMap.build(streets, seed)
    lo = streets.nodes.min(axis=0) - 70.0
    hi = streets.nodes.max(axis=0) + 70.0
    placer = _Placer(ground, _Raster(lo, hi, fill=0.0))
    builder = MeshBuilder()
    counts = {
        "buildings": 0,
        "trees": 0,
        "hedges": 0,
        "walls": 0,
        "street_lights": 0,
        "signs": 0,
        "traffic_lights": 0,
        "shrubs": 0,
        "fences": 0,
    }
    scene = _Scene(builder, streets, placer, counts, icosphere(1), seed)
    rng = np.random.default_rng([seed, 2])
    hw = streets.half_width

    # Kerbside furniture first: it stands on sidewalks, which buildings never reach.
    for e in range(len(streets.edges)):
        _street_furniture(scene, e, rng)
    _traffic_lights(scene, rng)

    for e in range(len(streets.edges)):
        for side in (1.0, -1.0):
            a = streets.starts[e]
            u = streets.directions[e]
            n = np.array([-u[1], u[0]])
            middle = a + 0.5 * streets.lengths[e] * u + side * n * (hw[e] + streets.sidewalk[e] + 25.0)
            style = _district(middle, seed)
            _frontage(scene, e, side, style, rng)

    # Woods around the town, so that views down a street end in trees, not in an empty plain.
    _woods(scene, np.random.default_rng([seed, 5]))

    # Shrubs last, in what is left free (front yards, lots, parks), from their own random stream
    # so that they do not move anything placed before.
    shrubs = np.random.default_rng([seed, 4])
    for e in range(len(streets.edges)):
        for side in (1.0, -1.0):
            _shrubs(scene, e, side, shrubs)

    slots = parking_slots(streets, ground)
    return Town(seed=seed, streets=streets, ground=ground, mesh=builder.build(), slots=slots, counts=counts)


def _woods(scene: _Scene, rng: np.random.Generator) -> None:
    """A belt of trees 20 to 65 m beyond the outermost streets, on a jittered 7 m grid."""
    builder, streets, placer, counts = scene.builder, scene.streets, scene.placer, scene.counts
    lo = streets.nodes.min(axis=0) - 65.0
    hi = streets.nodes.max(axis=0) + 65.0
    inner_lo = lo + 45.0
    inner_hi = hi - 45.0
    for x in np.arange(lo[0], hi[0], 7.0):
        for y in np.arange(lo[1], hi[1], 7.0):
            xy = np.array([x, y]) + rng.uniform(-2.5, 2.5, 2)
            if np.all((xy > inner_lo) & (xy < inner_hi)):
                continue
            around = xy + np.array([[0.0, 0.0], [1.5, 0.0], [-1.5, 0.0], [0.0, 1.5], [0.0, -1.5]])
            if rng.random() < 0.2 or np.any(placer.occupied.sample(around) > 0):
                continue
            _tree(builder, xy, rng, scene.sphere, crown=(2.0, 4.0), conifer=0.25, clumps=False)
            counts["trees"] += 1


def _shrubs(scene: _Scene, e: int, side: float, rng: np.random.Generator) -> None:
    """Bushes a little back from the sidewalk along one side of segment ``e``, where there is room."""
    builder, placer, counts = scene.builder, scene.placer, scene.counts
    kerbside = scene.kerbside(e, side)
    a, u, n, kerb, length = kerbside.a, kerbside.u, kerbside.n, kerbside.kerb, kerbside.length
    s = rng.uniform(0.0, 5.0)
    while s < length:
        radius = rng.uniform(0.5, 1.3)
        xy = a + s * u + n * (kerb + radius + rng.uniform(0.3, 3.5))
        flat = rng.uniform(0.55, 0.9)
        colour = _FOLIAGE[rng.integers(len(_FOLIAGE))] * rng.uniform(0.75, 1.25)
        if placer.disc_free(xy, radius):
            obj = builder.new_object()
            part = builder.add_part(Material.HEDGE, colour, obj)
            unit, faces = scene.sphere
            bumps = 1.0 + rng.uniform(-0.2, 0.2, len(unit))
            radii = np.array([radius, radius * rng.uniform(0.8, 1.2), radius * flat])
            centre = np.array([xy[0], xy[1], radii[2] * 0.75])
            builder.add(unit * bumps[:, None] * radii + centre, faces, part)
            placer.occupy(rectangle_corners(xy[0], xy[1], 0.0, 2 * radius, 2 * radius), margin=0.1)
            counts["shrubs"] += 1
        s += rng.uniform(2.0, 9.0)


def _district(xy: np.ndarray, seed: int) -> DistrictStyle:
    cell = np.floor(xy / 85.0).astype(np.int64)
    u = float(hash_uniform(cell[:1], cell[1:], seed + 13)[0])
    weights = np.cumsum([s.weight for s in STYLES])
    return STYLES[int(np.searchsorted(weights / weights[-1], u, side="right"))]


def _street_furniture(scene: _Scene, e: int, rng: np.random.Generator) -> None:
    """Street lights, avenue trees and signs on the sidewalks of segment ``e``."""
    builder, streets, ground, counts = scene.builder, scene.streets, scene.ground, scene.counts
    a = streets.starts[e]
    u = streets.directions[e]
    n = np.array([-u[1], u[0]])
    hw = float(streets.half_width[e])
    sw = float(streets.sidewalk[e])
    start = streets.junction_clearance[e, 0] + 2.0
    end = streets.lengths[e] - streets.junction_clearance[e, 1] - 2.0
    if end <= start:
        return

    def kerbside(s: float, side: float, offset: float) -> np.ndarray | None:
        xy = a + s * u + side * (hw + offset) * n
        # Off every carriageway (another street's junction may reach here).
        return xy if ground.locate(xy[None]).clearance[0] > 0.3 else None

    if rng.random() < 0.7:  # street lights, alternating sides or on one side
        pitch = rng.uniform(25.0, 36.0)
        one_side = rng.random() < 0.5
        for k, s in enumerate(np.arange(start + rng.uniform(0, pitch), end, pitch)):
            side = 1.0 if one_side or k % 2 == 0 else -1.0
            xy = kerbside(s, side, 0.45)
            if xy is not None:
                _street_light(builder, xy, -side * n, rng)
                counts["street_lights"] += 1

    lined = hash_uniform(np.array([e]), np.array([0]), scene.seed + 3)[0] < 0.8
    if lined:  # avenue trees in pits in the sidewalk
        pitch = rng.uniform(5.0, 8.0)
        for side in (1.0, -1.0):
            for s in np.arange(start + rng.uniform(0, pitch), end, pitch):
                xy = kerbside(s + rng.normal(0, 0.3), side, min(0.9, 0.5 * sw))
                if xy is not None:
                    _tree(builder, xy, rng, scene.sphere, crown=(2.2, 3.8), conifer=0.0)
                    counts["trees"] += 1

    for _ in range(rng.poisson(streets.lengths[e] / 70.0)):
        s = rng.uniform(start, end)
        side = rng.choice([1.0, -1.0])
        xy = kerbside(s, side, 0.35)
        if xy is not None:
            _sign(builder, xy, u * -side, rng)
            counts["signs"] += 1


def _street_light(
    builder: MeshBuilder, xy: np.ndarray, towards_road: np.ndarray, rng: np.random.Generator
) -> None:
    obj = builder.new_object()
    colour = (0.12, 0.13, 0.13) if rng.random() < 0.6 else (0.1, 0.16, 0.12)
    pole = builder.add_part(Material.POLE, colour, obj)
    lamp = builder.add_part(Material.LAMP, (0.7, 0.7, 0.65), obj)
    height = rng.uniform(6.5, 8.5)
    v, f = vertical_cylinder(xy[0], xy[1], 0.09, 0.0, height, sides=6, top_radius=0.06)
    builder.add(v, f, pole)
    top = np.array([xy[0], xy[1], height - 0.1])
    tip = top + np.array([towards_road[0], towards_road[1], 0.0]) * 1.6 + [0, 0, 0.15]
    v, f = cylinder_between(top, tip, 0.05, sides=5)
    builder.add(v, f, pole)
    head = tip[:2] + towards_road * 0.3
    yaw = float(np.arctan2(towards_road[1], towards_road[0]))
    v, f = box(rectangle_corners(head[0], head[1], yaw, 0.7, 0.3), tip[2] - 0.2, tip[2])
    builder.add(v, f, lamp)


def _sign(builder: MeshBuilder, xy: np.ndarray, facing: np.ndarray, rng: np.random.Generator) -> None:
    obj = builder.new_object()
    pole = builder.add_part(Material.POLE, (0.35, 0.36, 0.37), obj)
    colours = ((0.03, 0.08, 0.45), (0.55, 0.03, 0.03), (0.7, 0.52, 0.02), (0.75, 0.75, 0.72))
    plate = builder.add_part(Material.SIGN, colours[rng.integers(len(colours))], obj)
    height = rng.uniform(2.3, 2.9)
    v, f = vertical_cylinder(xy[0], xy[1], 0.04, 0.0, height, sides=5)
    builder.add(v, f, pole)
    centre = np.array([xy[0], xy[1], height - 0.35])
    normal = np.array([facing[0], facing[1], 0.0])
    if rng.random() < 0.5:
        v, f = cylinder_between(centre, centre + 0.04 * normal, 0.33, sides=10)
    else:
        yaw = float(np.arctan2(facing[1], facing[0]))
        side = rng.uniform(0.55, 0.8)
        v, f = box(
            rectangle_corners(centre[0], centre[1], yaw, 0.04, side),
            centre[2] - side / 2,
            centre[2] + side / 2,
        )
    builder.add(v, f, plate)


def _traffic_lights(scene: _Scene, rng: np.random.Generator) -> None:
    """A pole with a signal head on each approach of a third of the junctions."""
    builder, streets, ground, counts = scene.builder, scene.streets, scene.ground, scene.counts
    incident = streets.incident()
    degree = streets.degree()
    for node in np.flatnonzero(degree >= 3):
        if rng.random() > 0.35:
            continue
        for e in incident[node]:
            at_start = streets.edges[e, 0] == node
            u = streets.directions[e] * (1.0 if at_start else -1.0)
            n = np.array([-u[1], u[0]])
            clear = streets.junction_clearance[e, 0 if at_start else 1]
            xy = streets.nodes[node] + u * (clear - 0.5) - n * (streets.half_width[e] + 0.5)
            if ground.locate(xy[None]).clearance[0] < 0.3:
                continue
            obj = builder.new_object()
            pole = builder.add_part(Material.POLE, (0.1, 0.1, 0.1), obj)
            head = builder.add_part(Material.LAMP, (0.03, 0.03, 0.03), obj)
            v, f = vertical_cylinder(xy[0], xy[1], 0.07, 0.0, 3.6, sides=6)
            builder.add(v, f, pole)
            yaw = float(np.arctan2(u[1], u[0]))
            v, f = box(rectangle_corners(xy[0], xy[1], yaw, 0.3, 0.35), 2.6, 3.5)
            builder.add(v, f, head)
            counts["traffic_lights"] += 1


def _tree(
    builder: MeshBuilder,
    xy: np.ndarray,
    rng: np.random.Generator,
    sphere: tuple[np.ndarray, np.ndarray],
    crown: tuple[float, float],
    conifer: float,
    clumps: bool = True,
) -> None:
    obj = builder.new_object()
    trunk = builder.add_part(Material.TRUNK, (0.13, 0.09, 0.06), obj)
    leaves = _FOLIAGE[rng.integers(len(_FOLIAGE))] * rng.uniform(0.8, 1.2)
    radius = rng.uniform(*crown)
    # The crown's radius goes into its part: the camera estimates how far a ray crosses the leaves.
    foliage = builder.add_part(Material.FOLIAGE, leaves, obj, tex=(radius,) + (0.0,) * 7)
    if rng.random() < conifer:
        height = rng.uniform(6.0, 13.0)
        v, f = vertical_cylinder(xy[0], xy[1], 0.18, 0.0, 1.5, sides=5)
        builder.add(v, f, trunk)
        v, f = vertical_cylinder(xy[0], xy[1], radius * 0.8, 1.0, height, sides=8, top_radius=0.05)
        builder.add(v, f, foliage)
        return
    trunk_height = rng.uniform(1.8, 3.2)
    v, f = vertical_cylinder(xy[0], xy[1], rng.uniform(0.12, 0.25), 0.0, trunk_height + radius * 0.6, sides=6)
    builder.add(v, f, trunk)
    unit, faces = sphere
    bumps = 1.0 + rng.uniform(-0.15, 0.15, len(unit))
    radii = np.array([radius, radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.8, 1.3)])
    centre = np.array([xy[0], xy[1], trunk_height + radii[2]])
    builder.add(unit * bumps[:, None] * radii + centre, faces, foliage)
    if not clumps:
        return
    # Two to four smaller clumps bulging out of the crown make its outline irregular (drawn from
    # a stream of the tree's own, so that they move nothing else in the town).
    own = np.random.default_rng([obj, 77])
    unit, faces = _CLUMP  # coarser: they are small, and the ray casting structure stays small
    for _ in range(int(own.integers(2, 5))):
        azimuth = own.uniform(0.0, 2 * np.pi)
        rise = own.uniform(-0.35, 0.6)
        r = radius * own.uniform(0.4, 0.65)
        offset = np.array([np.cos(azimuth) * radii[0], np.sin(azimuth) * radii[1], rise * radii[2]]) * 0.75
        bumps = 1.0 + own.uniform(-0.2, 0.2, len(unit))
        builder.add(unit * bumps[:, None] * r + centre + offset, faces, foliage)


def _frontage(scene: _Scene, e: int, side: float, style: DistrictStyle, rng: np.random.Generator) -> None:
    """Buildings (or park) along one side of street segment ``e``."""
    builder, placer, counts = scene.builder, scene.placer, scene.counts
    kerbside = scene.kerbside(e, side)
    a, u, n, kerb, length = kerbside.a, kerbside.u, kerbside.n, kerbside.kerb, kerbside.length
    yaw = kerbside.yaw
    s = rng.uniform(0.0, 6.0)

    if style.name == "park":
        while s < length:
            depth = rng.uniform(2.0, 30.0)
            xy = a + s * u + n * (kerb + depth)
            if placer.point_free(xy, 1.5):
                _tree(builder, xy, rng, scene.sphere, crown=(1.8, 4.0), conifer=0.3)
                placer.occupy(rectangle_corners(xy[0], xy[1], 0.0, 2.0, 2.0))
                counts["trees"] += 1
            s += rng.uniform(3.0, 12.0)
        if rng.random() < style.hedge:
            _hedge_run(kerbside, kerb + 0.6, 0.0, length, rng)
        return

    while s < length:
        width = rng.uniform(*style.frontage)
        setback = rng.uniform(*style.setback)
        depth = rng.uniform(*style.depth)
        centre = a + (s + width / 2) * u + n * (kerb + setback + depth / 2)
        corners = rectangle_corners(centre[0], centre[1], yaw, width, depth)
        if not placer.rectangle_free(corners):
            # Blocked (a corner lot, the crossing street): try a narrower one a little further on.
            narrower = max(style.frontage[0], 0.6 * width)
            centre = a + (s + 2.0 + narrower / 2) * u + n * (kerb + setback + depth / 2)
            width = narrower
            corners = rectangle_corners(centre[0], centre[1], yaw, width, depth)
            if not placer.rectangle_free(corners):
                s += 3.0
                continue
            s += 2.0
        _building(builder, corners, style, rng)
        placer.occupy(corners)
        counts["buildings"] += 1
        if setback > 1.6 and rng.random() < style.hedge:
            _hedge_run(kerbside, kerb + 0.5, s, s + width, rng)
        elif setback > 1.0 and rng.random() < style.wall:
            _wall_run(kerbside, kerb + 0.3, s, s + width, rng)
        elif setback > 1.0:
            # Garden fences (decided by a hash, so that they move nothing drawn after them).
            h = hash_uniform(
                np.array([e * 2 + (side > 0)]), np.array([counts["buildings"]]), scene.seed + 17
            )[0]
            if h < style.fence:
                _fence_run(kerbside, kerb + 0.2, s, s + width, float(h / style.fence))
        if setback > 3.0 and rng.random() < style.yard_trees:
            xy = a + (s + rng.uniform(0.2, 0.8) * width) * u + n * (kerb + setback * 0.5)
            if placer.point_free(xy, 0.8):
                _tree(builder, xy, rng, scene.sphere, crown=(1.2, min(2.8, setback * 0.6)), conifer=0.25)
                counts["trees"] += 1
        gap = 0.0 if rng.random() < style.gap_zero else rng.uniform(*style.gap)
        if gap > 4.0 and rng.random() < style.yard_trees:
            xy = a + (s + width + gap / 2) * u + n * (kerb + rng.uniform(2.0, 8.0))
            if placer.point_free(xy, 1.0):
                _tree(builder, xy, rng, scene.sphere, crown=(1.5, min(3.5, gap * 0.45)), conifer=0.25)
                placer.occupy(rectangle_corners(xy[0], xy[1], 0.0, 1.5, 1.5))
                counts["trees"] += 1
        s += width + gap


def _hedge_run(kerbside: _Kerbside, offset: float, s0: float, s1: float, rng: np.random.Generator) -> None:
    """A hedge ``offset`` metres from the street line between ``s0`` and ``s1``, broken by an entrance."""
    builder, placer = kerbside.scene.builder, kerbside.scene.placer
    a, u, n, yaw = kerbside.a, kerbside.u, kerbside.n, kerbside.yaw
    thickness = rng.uniform(0.6, 1.0)
    height = rng.uniform(0.8, 1.7)
    entrance = rng.uniform(0.3, 0.7)  # a gap for the path to the door
    colour = _FOLIAGE[rng.integers(len(_FOLIAGE))] * rng.uniform(0.7, 1.0)
    obj = builder.new_object()
    part = builder.add_part(Material.HEDGE, colour, obj)
    placed = False
    for lo, hi in ((s0, s0 + entrance * (s1 - s0) - 0.8), (s0 + entrance * (s1 - s0) + 0.8, s1)):
        if hi - lo < 1.0:
            continue
        centre = a + 0.5 * (lo + hi) * u + n * (offset + thickness / 2)
        corners = rectangle_corners(centre[0], centre[1], yaw, hi - lo, thickness)
        if placer.rectangle_free(corners, margin=0.1):
            v, f = box(corners, 0.0, height)
            builder.add(v, f, part)
            placer.occupy(corners, margin=0.1)
            placed = True
    kerbside.scene.counts["hedges"] += int(placed)


_FENCES = (
    # (colour, pitch m, picket share of the pitch, height range m)
    ((0.72, 0.72, 0.68), 0.16, 0.5, (0.9, 1.2)),  # white wooden pickets
    ((0.3, 0.2, 0.12), 0.14, 0.6, (0.9, 1.5)),  # brown wooden pickets
    ((0.08, 0.08, 0.08), 0.12, 0.2, (1.0, 1.6)),  # dark metal bars
    ((0.08, 0.16, 0.08), 0.1, 0.15, (1.0, 1.8)),  # green mesh panels
)


def _fence_run(kerbside: _Kerbside, offset: float, s0: float, s1: float, pick: float) -> None:
    """A garden fence along the front of a plot; ``pick`` in [0, 1) chooses its kind and height.
    Its pickets are a texture that rays pass between (``textures.fence_gaps``)."""
    a, u, n = kerbside.a, kerbside.u, kerbside.n
    colour, pitch, bar, heights = _FENCES[int(pick * len(_FENCES)) % len(_FENCES)]
    height = heights[0] + (heights[1] - heights[0]) * ((pick * 7.0) % 1.0)
    length = max(s1 - s0 - 1.0, 1.0)  # a gap for the gate
    start = a + (s0 + 0.5) * u + n * offset
    centre = start + 0.5 * length * u + n * 0.02
    kerbside.place_box(
        "fences",
        rectangle_corners(centre[0], centre[1], kerbside.yaw, length, 0.04),
        height,
        0.05,
        Material.FENCE,
        colour,
        origin=(start[0], start[1], 0.0),
        tangent=u,
        tex=(pitch, bar, height, 0.0, 0.0, 0.0, 0.0, 0.0),
    )


def _wall_run(kerbside: _Kerbside, offset: float, s0: float, s1: float, rng: np.random.Generator) -> None:
    """A garden wall ``offset`` metres from the street line, 2 m short of each end of the plot."""
    height = rng.uniform(1.2, 2.3)
    colour = np.array(_CONCRETE[rng.integers(len(_CONCRETE))]) * rng.uniform(0.8, 1.1)
    centre = kerbside.a + 0.5 * (s0 + s1) * kerbside.u + kerbside.n * (offset + 0.15)
    corners = rectangle_corners(centre[0], centre[1], kerbside.yaw, max(s1 - s0 - 4.0, 1.0), 0.3)
    kerbside.place_box("walls", corners, height, 0.1, Material.WALL, colour)


def _building(
    builder: MeshBuilder, corners: np.ndarray, style: DistrictStyle, rng: np.random.Generator
) -> None:
    obj = builder.new_object()
    floors = int(rng.integers(style.floors[0], style.floors[1] + 1))
    floor_height = rng.uniform(*style.floor_height)
    eave = floors * floor_height + rng.uniform(0.2, 0.9)
    colour = np.array(style.palette[rng.integers(len(style.palette))]) * rng.uniform(0.85, 1.1)
    glass = np.array([0.04, 0.05, 0.065]) * rng.uniform(0.7, 1.4)
    spacing = rng.uniform(2.0, 3.6) if style.name != "industrial" else rng.uniform(5.0, 9.0)
    window_w = rng.uniform(0.4, 0.7)
    window_h = rng.uniform(0.42, 0.6)
    shop = 1.0 if rng.random() < style.shopfront else 0.0
    margin = rng.uniform(0.6, 1.8)
    gable = rng.random() < style.gable
    rise = 0.0
    lengths = np.linalg.norm(np.roll(corners, -1, axis=0) - corners, axis=1)
    if gable:
        # The ridge runs along the longer side.
        if lengths[1] > lengths[0]:
            corners = np.roll(corners, -1, axis=0)
            lengths = np.roll(lengths, -1)
        rise = 0.5 * lengths[1] * np.tan(np.radians(rng.uniform(28.0, 45.0)))
    walls = []
    for i in range(4):
        start = corners[i]
        direction = (corners[(i + 1) % 4] - start) / lengths[i]
        tex = (lengths[i], eave, spacing, floor_height, window_w, window_h, shop, margin)
        walls.append(
            builder.add_part(
                Material.FACADE,
                colour,
                obj,
                albedo2=glass,
                origin=(start[0], start[1], 0.0),
                tangent=direction,
                tex=tex,
                reflectivity=float(0.18 + 0.4 * colour.mean()),
            )
        )
    if gable:
        roof_colour = np.array(_ROOF_TILES[rng.integers(len(_ROOF_TILES))]) * rng.uniform(0.85, 1.15)
        roof = builder.add_part(Material.ROOF, roof_colour, obj)
        v, f = box(corners, 0.0, eave)
        groups = BOX_FACE_GROUPS
        builder.add(v, f[groups < 4], np.array(walls)[groups[groups < 4]])
        v, f = gable_roof(corners, eave, rise)
        parts = np.array([*walls, roof])
        builder.add(v, f, parts[GABLE_FACE_GROUPS])
    else:
        roof = builder.add_part(Material.ROOF, np.array([0.3, 0.3, 0.3]) * rng.uniform(0.6, 1.2), obj)
        v, f = box(corners, 0.0, eave)
        parts = np.array([*walls, roof])
        builder.add(v, f, parts[BOX_FACE_GROUPS])
