"""Parked cars: kerbside slots belong to the town, which of them hold a car belongs to a drive.

Two drives over the same street see other parked cars (other count, models, colours), as on two
real drives a few days apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.ground import GroundMap
from liploc.synth.materials import Material
from liploc.synth.meshes import MeshBuilder, TriangleMesh, box, cylinder_between, rectangle_corners
from liploc.synth.row_table import RowTable
from liploc.synth.streets import LANE_WIDTH_M, StreetNetwork

_SLOT_PITCH_M = 5.8
_CAR_COLOURS = np.array(
    [
        [0.62, 0.62, 0.6],  # white
        [0.36, 0.37, 0.38],  # silver
        [0.15, 0.15, 0.16],  # grey
        [0.02, 0.02, 0.025],  # black
        [0.02, 0.05, 0.16],  # dark blue
        [0.08, 0.16, 0.4],  # blue
        [0.4, 0.03, 0.02],  # red
        [0.16, 0.02, 0.03],  # dark red
        [0.04, 0.12, 0.06],  # dark green
        [0.42, 0.33, 0.18],  # beige
        [0.55, 0.35, 0.03],  # yellow / orange
        [0.12, 0.08, 0.05],  # brown
    ],
    dtype=np.float32,
)
_CAR_COLOUR_WEIGHTS = np.array([0.13, 0.2, 0.16, 0.19, 0.07, 0.05, 0.06, 0.03, 0.03, 0.03, 0.02, 0.03])
_CAR_COLOUR_WEIGHTS = _CAR_COLOUR_WEIGHTS / _CAR_COLOUR_WEIGHTS.sum()


@dataclass(frozen=True, eq=False)
class ParkingSlots(RowTable):
    """Kerbside parking places of a town.

    Attributes:
        xy: (S, 2) slot centres.
        yaw: (S,) heading a car parked there faces.
        segment: (S,) street segment of each slot.
        side: (S,) +1 left of the segment's direction, -1 right.
    """

    xy: np.ndarray
    yaw: np.ndarray
    segment: np.ndarray
    side: np.ndarray


def parking_slots(streets: StreetNetwork, ground: GroundMap) -> ParkingSlots:
    """Slots every ~6 m in the parking lanes, away from junctions and from other carriageways."""
    xy, yaw, segment, side = [], [], [], []
    hw = streets.half_width
    for e in np.flatnonzero(streets.parking):
        a = streets.starts[e]
        u = streets.directions[e]
        n = np.array([-u[1], u[0]])
        start = streets.junction_clearance[e, 0] + 3.0
        end = streets.lengths[e] - streets.junction_clearance[e, 1] - 3.0
        if end - start < _SLOT_PITCH_M:
            continue
        s = np.arange(start + 0.5 * _SLOT_PITCH_M, end - 0.5 * _SLOT_PITCH_M + 1e-6, _SLOT_PITCH_M)
        for sigma in (1.0, -1.0):
            centres = a + s[:, None] * u + sigma * (hw[e] - 1.05) * n
            heading = np.arctan2(u[1], u[0]) + (np.pi if sigma > 0 else 0.0)
            xy.append(centres)
            yaw.append(np.full(len(s), heading))
            segment.append(np.full(len(s), e))
            side.append(np.full(len(s), sigma))
    if not xy:
        empty = np.zeros(0)
        return ParkingSlots(np.zeros((0, 2)), empty, empty.astype(int), empty)
    slots = ParkingSlots(
        xy=np.concatenate(xy),
        yaw=np.concatenate(yaw),
        segment=np.concatenate(segment),
        side=np.concatenate(side),
    )
    # Keep slots whose nearest carriageway is their own (not inside another street's junction).
    sample = ground.locate(slots.xy)
    own = sample.segment == slots.segment
    return slots.take(own)


def drive_cars(
    slots: ParkingSlots,
    streets: StreetNetwork,
    driven_xy: np.ndarray,
    rng: np.random.Generator,
    first_object_id: int,
) -> tuple[TriangleMesh, dict[str, int]]:
    """The cars of one drive: parked in a random subset of ``slots`` and standing in traffic.

    Traffic (cars waiting at junctions and in queues) stands in lanes, never within reach of the
    drive's own path ``driven_xy`` (M, 2). Returns the mesh and the number of cars of each kind.
    """
    builder = MeshBuilder(first_object_id=first_object_id)
    counts = {"parked": 0, "traffic": 0}
    if len(slots):
        keys = slots.segment * 2 + (slots.side > 0)
        fill = rng.uniform(0.25, 0.9, int(keys.max()) + 1)
        occupied = rng.random(len(slots)) < fill[keys]
        for i in np.flatnonzero(occupied):
            _add_car(builder, slots.xy[i], slots.yaw[i] + rng.normal(0.0, 0.03), rng)
            counts["parked"] += 1
    for xy, yaw in _traffic_places(streets, driven_xy, rng):
        _add_car(builder, xy, yaw, rng)
        counts["traffic"] += 1
    return builder.build(), counts


def _traffic_places(
    streets: StreetNetwork, driven_xy: np.ndarray, rng: np.random.Generator
) -> list[tuple[np.ndarray, float]]:
    """Positions and headings of cars standing in the lanes: queues before junctions, a few between."""
    keep_out = _PathRaster(driven_xy, radius=2.1)
    places = []
    for e in range(len(streets.edges)):
        a = streets.starts[e]
        u = streets.directions[e]
        n = np.array([-u[1], u[0]])
        length = streets.lengths[e]
        clear = streets.junction_clearance[e]
        for lane in range(int(streets.lanes[e])):
            offset = (lane + 0.5) * LANE_WIDTH_M
            for sign in (1.0, -1.0):  # +1: lane right of u, driving along u; -1: the other way
                heading = np.arctan2(u[1], u[0]) + (0.0 if sign > 0 else np.pi)
                # The junction this lane drives into is at the end (along u) or the start.
                stop = (length - clear[1] - 2.0) if sign > 0 else (clear[0] + 2.0)
                queue = rng.geometric(0.55) - 1 if clear[1 if sign > 0 else 0] > 0 else 0
                spots = [stop - sign * (2.5 + k * rng.uniform(6.0, 7.5)) for k in range(queue)]
                free = (clear[0] + 4.0, length - clear[1] - 4.0)
                if free[1] > free[0]:
                    spots += list(rng.uniform(free[0], free[1], rng.poisson((free[1] - free[0]) / 60.0)))
                for s in spots:
                    if not clear[0] + 2.0 < s < length - clear[1] - 2.0:
                        continue
                    xy = a + s * u - sign * offset * n + rng.normal(0.0, 0.15) * n
                    if not keep_out.near(xy):
                        places.append((xy, heading + rng.normal(0.0, 0.02)))
    return places


class _PathRaster:
    """Cells of a 0.5 m grid within ``radius`` of a path, for quick 'is this spot on the path' tests."""

    _CELL = 0.5

    def __init__(self, path_xy: np.ndarray, radius: float) -> None:
        cell = self._CELL
        self.origin = path_xy.min(axis=0) - radius - 2 * cell
        r = int(np.ceil(radius / cell))
        cells = np.floor((path_xy - self.origin) / cell).astype(np.int64)
        self.shape = tuple(cells.max(axis=0) + r + 2)
        self.mask = np.zeros(self.shape, dtype=bool)
        reach = (radius + cell) / cell  # path points sit anywhere in their cell
        for di in range(-r - 1, r + 2):
            for dj in range(-r - 1, r + 2):
                if di * di + dj * dj <= reach * reach:
                    i = np.clip(cells[:, 0] + di, 0, self.shape[0] - 1)
                    j = np.clip(cells[:, 1] + dj, 0, self.shape[1] - 1)
                    self.mask[i, j] = True

    def near(self, xy: np.ndarray) -> bool:
        i, j = np.floor((xy - self.origin) / self._CELL).astype(np.int64)
        return bool(0 <= i < self.shape[0] and 0 <= j < self.shape[1] and self.mask[i, j])


def _wheel_template() -> tuple[np.ndarray, np.ndarray]:
    """A wheel in the car's frame (x forward, y left, z up) centred on its hub: the same cylinder
    ``cylinder_between`` makes for an axle along y, so that placing it is one rotation."""
    return cylinder_between(np.array([0.0, -0.12, 0.0]), np.array([0.0, 0.12, 0.0]), 0.33, sides=8)


_WHEEL_V, _WHEEL_F = _wheel_template()


def _add_car(builder: MeshBuilder, xy: np.ndarray, yaw: float, rng: np.random.Generator) -> None:
    van = rng.random() < 0.12
    length = rng.uniform(4.8, 5.6) if van else rng.uniform(3.8, 4.9)
    width = rng.uniform(1.75, 2.0) if van else rng.uniform(1.65, 1.85)
    xy = xy + rng.normal(0.0, 0.25, 2) * [1.0, 0.3]
    colour = _CAR_COLOURS[rng.choice(len(_CAR_COLOURS), p=_CAR_COLOUR_WEIGHTS)] * rng.uniform(0.85, 1.1)
    obj = builder.new_object()
    luminance = float(colour.mean())
    body_top = rng.uniform(0.95, 1.1)
    cabin_len = length * (0.85 if van else rng.uniform(0.45, 0.55))
    roof = rng.uniform(1.9, 2.3) if van else rng.uniform(1.38, 1.55)
    forward2 = np.array([np.cos(yaw), np.sin(yaw)])
    # The paint's texture frame: centre, heading and size (the camera draws lights and plates).
    shift = 0.0 if van else -0.08 * length
    # Paint and glass carry the car's frame and size, for the camera's details (lights, plates,
    # wheel arches, door seams, window pillars in the paint colour).
    frame = {
        "origin": (xy[0], xy[1], 0.0),
        "tangent": forward2,
        "tex": (length, width, body_top, roof, float(van), cabin_len, shift, 0.0),
    }
    paint = builder.add_part(Material.CAR_PAINT, colour, obj, reflectivity=0.1 + 0.45 * luminance, **frame)
    glass = builder.add_part(Material.CAR_GLASS, (0.03, 0.035, 0.04), obj, albedo2=colour, **frame)
    tyre = builder.add_part(Material.TYRE, (0.02, 0.02, 0.02), obj)
    # Body, then the cabin (glass all round, painted roof) set back from the bonnet.
    v, f = box(rectangle_corners(xy[0], xy[1], yaw, length, width), 0.3, body_top)
    builder.add(v, f, paint)
    cx, cy = xy + shift * forward2
    cabin = rectangle_corners(cx, cy, yaw, cabin_len, width * 0.92)
    v, f = box(cabin, body_top, roof - 0.05)
    builder.add(v, f, glass)
    v, f = box(cabin, roof - 0.05, roof)
    builder.add(v, f, paint)
    # Four wheels: the template moved to each hub and turned by the heading, added at once.
    hubs = np.array([[a, c] for a in (0.32 * length, -0.32 * length) for c in (0.5 * width, -0.5 * width)])
    c, s = np.cos(yaw), np.sin(yaw)
    local = _WHEEL_V[None, :, :2] + hubs[:, None, :]
    wheels = np.empty((4, len(_WHEEL_V), 3))
    wheels[..., 0] = xy[0] + c * local[..., 0] - s * local[..., 1]
    wheels[..., 1] = xy[1] + s * local[..., 0] + c * local[..., 1]
    wheels[..., 2] = 0.33 + _WHEEL_V[None, :, 2]
    faces = (_WHEEL_F[None] + (np.arange(4) * len(_WHEEL_V))[:, None, None]).reshape(-1, 3)
    builder.add(wheels.reshape(-1, 3), faces, tyre)
