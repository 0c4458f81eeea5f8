"""Drives: routes through the street network and the poses of the car along them.

A drive is a random walk over the streets of one region that prefers streets it has not driven yet
(so it covers the region) but comes back to some (loops, revisits). A partner drive follows the same
streets the same way (another lane where there is one) or the opposite way, with other parked cars
and other light. The LiDAR is 1.73 m above the road; poses are 4x4 LiDAR-to-town transforms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.lighting import Lighting, random_lighting
from liploc.synth.rig import LIDAR_HEIGHT_M
from liploc.synth.streets import LANE_WIDTH_M, REGION_HELD_OUT, REGION_TRAIN, StreetNetwork

_STEP_M = 0.25
"""Resolution of the driven path before it is sampled at the frame spacing."""


@dataclass(frozen=True, eq=False)
class DrivePlan:
    """Everything that defines one drive before rendering.

    Attributes:
        index: drive number (sequence name is ``f"{index:02d}"``).
        role: ``train`` or ``test``.
        region: ``train``, ``held-out`` or ``trajectory``.
        variant: ``base``, ``same-direction`` or ``reverse`` (relative to ``partner``).
        partner: index of the drive over the same streets, or None.
        streets: street segments driven, in order.
        path: (M, 2) the driven line, densely sampled (keeps other cars off it).
        poses: (F, 4, 4) LiDAR poses in the town frame.
        lighting: sun and sky of the drive.
        cars_seed: seed of the drive's parked cars.
    """

    index: int
    role: str
    region: str
    variant: str
    partner: int | None
    streets: tuple[int, ...]
    path: np.ndarray
    poses: np.ndarray
    lighting: Lighting
    cars_seed: int

    @property
    def name(self) -> str:
        return f"{self.index:02d}"

    @property
    def length_m(self) -> float:
        """Distance between consecutive frames, summed."""
        if len(self.poses) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(self.poses[:, :2, 3], axis=0), axis=1).sum())


@dataclass(frozen=True)
class _Route:
    legs: tuple[tuple[int, bool], ...]
    """(segment, driven from its start to its end)."""


def random_route(
    streets: StreetNetwork, allowed: np.ndarray, length_m: float, rng: np.random.Generator
) -> _Route:
    """A walk over the ``allowed`` segments at least ``length_m`` long, preferring new streets."""
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        raise ValueError("no street to drive on in this region")
    incident = streets.incident()
    lengths = streets.lengths
    visits = np.zeros(len(streets.edges))
    edge = int(rng.choice(candidates))
    forward = bool(rng.random() < 0.5)
    legs = [(edge, forward)]
    visits[edge] += 1
    total = lengths[edge]
    while total < length_m:
        node = streets.edges[edge, 1 if forward else 0]
        options = [e for e in incident[node] if allowed[e] and e != edge]
        if not options:
            options = [edge]  # dead end: turn round
        heading = _leg_direction(streets, edge, forward)
        weights = []
        for e in options:
            out_forward = streets.edges[e, 0] == node
            turn = float(np.dot(heading, _leg_direction(streets, e, out_forward)))
            weights.append((1.0 / (1.0 + visits[e]) ** 2) * (1.0 if turn > 0.7 else 0.75))
        p = np.array(weights) / np.sum(weights)
        edge = int(options[int(rng.choice(len(options), p=p))])
        forward = bool(streets.edges[edge, 0] == node)
        legs.append((edge, forward))
        visits[edge] += 1
        total += lengths[edge]
    return _Route(tuple(legs))


def _leg_direction(streets: StreetNetwork, edge: int, forward: bool) -> np.ndarray:
    d = streets.directions[edge]
    return d if forward else -d


def reverse_route(route: _Route) -> _Route:
    """The same streets driven the other way round."""
    return _Route(tuple((e, not fwd) for e, fwd in reversed(route.legs)))


def route_path(streets: StreetNetwork, route: _Route, lane: int) -> np.ndarray:
    """(M, 2) points every ``_STEP_M`` along the route, in lane ``lane`` (0: rightmost driving lane),
    with rounded corners."""
    nodes = [streets.nodes[streets.edges[e, 0 if fwd else 1]] for e, fwd in route.legs]
    last_e, last_fwd = route.legs[-1]
    nodes.append(streets.nodes[streets.edges[last_e, 1 if last_fwd else 0]])
    offsets = [(min(lane, int(streets.lanes[e]) - 1) + 0.5) * LANE_WIDTH_M for e, _ in route.legs]
    # Offset each leg to the right of its direction, join consecutive legs at their lines' crossing.
    dirs = []
    for k in range(len(route.legs)):
        d = nodes[k + 1] - nodes[k]
        dirs.append(d / max(np.linalg.norm(d), 1e-9))
    corners = [nodes[0] + offsets[0] * _right(dirs[0])]
    for k in range(1, len(route.legs)):
        p1 = nodes[k] + offsets[k - 1] * _right(dirs[k - 1])
        p2 = nodes[k] + offsets[k] * _right(dirs[k])
        cross = dirs[k - 1][0] * dirs[k][1] - dirs[k - 1][1] * dirs[k][0]
        if abs(cross) < 0.05:
            corners.append(0.5 * (p1 + p2) if np.dot(dirs[k - 1], dirs[k]) > 0 else p1)
            if np.dot(dirs[k - 1], dirs[k]) <= 0:
                corners.append(p2)  # a U-turn at a dead end: across to the other lane
            continue
        s = ((p2 - p1)[0] * dirs[k][1] - (p2 - p1)[1] * dirs[k][0]) / cross
        corners.append(p1 + s * dirs[k - 1])
    corners.append(nodes[-1] + offsets[-1] * _right(dirs[-1]))
    return _resample(_round_corners(np.array(corners), radius=7.0), _STEP_M)


def _right(d: np.ndarray) -> np.ndarray:
    return np.array([d[1], -d[0]])


def _round_corners(points: np.ndarray, radius: float) -> np.ndarray:
    """Replace each corner of a polyline by a circular arc (radius shrunk where legs are short)."""
    out = [points[0]]
    for k in range(1, len(points) - 1):
        a, p, b = points[k - 1], points[k], points[k + 1]
        d_in = p - a
        d_out = b - p
        l_in, l_out = np.linalg.norm(d_in), np.linalg.norm(d_out)
        if l_in < 1e-6 or l_out < 1e-6:
            continue
        d_in /= l_in
        d_out /= l_out
        angle = np.arccos(np.clip(np.dot(d_in, d_out), -1.0, 1.0))
        if angle < np.radians(3.0):
            out.append(p)
            continue
        tangent = radius * np.tan(angle / 2)
        tangent = min(tangent, 0.45 * l_in, 0.45 * l_out)
        start = p - d_in * tangent
        end = p + d_out * tangent
        # Quadratic Bezier through the corner: close to an arc and never overshoots.
        t = np.linspace(0.0, 1.0, 9)[:, None]
        out.extend((1 - t) ** 2 * start + 2 * (1 - t) * t * p + t**2 * end)
    out.append(points[-1])
    return np.array(out)


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-6])
    points = points[keep]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    targets = np.arange(0.0, s[-1], step)
    return np.column_stack([np.interp(targets, s, points[:, 0]), np.interp(targets, s, points[:, 1])])


def poses_along(
    path: np.ndarray, frames: int, spacing: float, start_m: float, rng: np.random.Generator
) -> np.ndarray:
    """(frames, 4, 4) LiDAR poses every ``spacing`` metres along ``path`` from ``start_m``.

    The car wanders a little inside its lane and sways slightly (smooth, drive-specific), as a
    driver does; the heading follows the path.
    """
    s_path = np.arange(len(path)) * _STEP_M
    s = start_m + np.arange(frames) * spacing
    s = np.minimum(s, s_path[-1])
    x = np.interp(s, s_path, path[:, 0])
    y = np.interp(s, s_path, path[:, 1])
    ahead = np.minimum(s + 1.5, s_path[-1])
    behind = np.maximum(s - 1.5, 0.0)
    dx = np.interp(ahead, s_path, path[:, 0]) - np.interp(behind, s_path, path[:, 0])
    dy = np.interp(ahead, s_path, path[:, 1]) - np.interp(behind, s_path, path[:, 1])
    yaw = np.arctan2(dy, dx)
    lateral = _wander(s, rng, amplitude=0.18, wavelengths=(40.0, 150.0))
    x += -np.sin(yaw) * lateral
    y += np.cos(yaw) * lateral
    yaw = yaw + np.radians(_wander(s, rng, amplitude=0.4, wavelengths=(15.0, 60.0)))
    pitch = np.radians(_wander(s, rng, amplitude=0.25, wavelengths=(20.0, 80.0)))
    roll = np.radians(_wander(s, rng, amplitude=0.2, wavelengths=(20.0, 80.0)))
    return pose_matrices(x, y, np.full_like(x, LIDAR_HEIGHT_M), yaw, pitch, roll)


def _wander(
    s: np.ndarray, rng: np.random.Generator, amplitude: float, wavelengths: tuple[float, float]
) -> np.ndarray:
    """A smooth random function of the distance driven, within about +-``amplitude``."""
    total = np.zeros_like(s)
    for _ in range(3):
        wavelength = rng.uniform(*wavelengths)
        total += np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 2 * np.pi))
    return amplitude * total / 3.0


def pose_matrices(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray
) -> np.ndarray:
    """(N, 4, 4) transforms ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` with translation (x, y, z)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    poses = np.zeros((len(x), 4, 4))
    poses[:, 0, 0] = cy * cp
    poses[:, 0, 1] = cy * sp * sr - sy * cr
    poses[:, 0, 2] = cy * sp * cr + sy * sr
    poses[:, 1, 0] = sy * cp
    poses[:, 1, 1] = sy * sp * sr + cy * cr
    poses[:, 1, 2] = sy * sp * cr - cy * sr
    poses[:, 2, 0] = -sp
    poses[:, 2, 1] = cp * sr
    poses[:, 2, 2] = cp * cr
    poses[:, 0, 3] = x
    poses[:, 1, 3] = y
    poses[:, 2, 3] = z
    poses[:, 3, 3] = 1.0
    return poses


def _variants(count: int, pairs: str) -> list[tuple[str, int | None]]:
    """(variant, partner offset within the group) for ``count`` drives of one group."""
    out: list[tuple[str, int | None]] = []
    pair_index = 0
    while len(out) < count:
        if pairs == "none" or len(out) == count - 1:
            out.append(("base", None))
            continue
        second = pairs if pairs != "mixed" else ("same-direction" if pair_index % 2 == 0 else "reverse")
        base = len(out)
        out += [("base", base + 1), (second, base)]
        pair_index += 1
    return out


def plan_grid_drives(
    streets: StreetNetwork,
    drives: int,
    held_out: int,
    frames: int,
    spacing: float,
    pairs: str,
    seed: int,
) -> list[DrivePlan]:
    """Drives over a grid town: training drives first, then the held-out ones."""
    plans: list[DrivePlan] = []
    groups = [("train", REGION_TRAIN, drives - held_out), ("test", REGION_HELD_OUT, held_out)]
    length_needed = (frames - 1) * spacing + 30.0
    for role, region, count in groups:
        variants = _variants(count, pairs)
        first = len(plans)
        routes: dict[int, tuple[_Route, float]] = {}
        for k, (variant, partner) in enumerate(variants):
            index = first + k
            rng = np.random.default_rng([seed, 100, index])
            if variant == "base":
                route = random_route(streets, streets.region == region, length_needed, rng)
                start = 10.0
                lane = 0
            else:
                base_route, base_start = routes[first + partner]
                if variant == "reverse":
                    route = reverse_route(base_route)
                    total = sum(streets.lengths[e] for e, _ in route.legs)
                    # Start where the partner ended, so both cover the same stretch of street.
                    start = max(5.0, total - base_start - (frames - 1) * spacing)
                    lane = 0
                else:
                    route = base_route
                    start = base_start + rng.uniform(0.0, 0.8 * spacing)
                    lane = 1
            routes[index] = (route, start)
            path = route_path(streets, route, lane)
            poses = poses_along(path, frames, spacing, start, rng)
            plans.append(
                DrivePlan(
                    index=index,
                    role=role,
                    region="train" if region == REGION_TRAIN else "held-out",
                    variant=variant,
                    partner=None if partner is None else first + partner,
                    streets=tuple(e for e, _ in route.legs),
                    path=path,
                    poses=poses,
                    lighting=random_lighting(np.random.default_rng([seed, 200, index])),
                    cars_seed=int(np.random.default_rng([seed, 300, index]).integers(2**31 - 1)),
                )
            )
    return plans


def plan_trajectory_drives(
    lidar_poses: np.ndarray, drives: int, held_out: int, pairs: str, seed: int
) -> list[DrivePlan]:
    """Drives along a given trajectory (flattened LiDAR poses, z = LiDAR height).

    The first drive follows it exactly; partners drive it again (same way, a few decimetres off)
    or the opposite way in the other lane. The last ``held_out`` drives get the role ``test``.
    """
    variants = _variants(drives, pairs)
    plans = []
    for index, (variant, partner) in enumerate(variants):
        rng = np.random.default_rng([seed, 100, index])
        poses = lidar_poses.copy()
        if variant != "base" or index > 0:
            yaw = np.arctan2(poses[:, 1, 0], poses[:, 0, 0])
            left = np.column_stack([-np.sin(yaw), np.cos(yaw)])
            if variant == "reverse":
                shifted = poses[:, :2, 3] + left * LANE_WIDTH_M
                poses = pose_matrices(
                    shifted[::-1, 0], shifted[::-1, 1], poses[::-1, 2, 3], yaw[::-1] + np.pi,
                    np.zeros(len(poses)), np.zeros(len(poses)),
                )  # fmt: skip
            else:
                shift = left * _wander(np.arange(len(poses), dtype=float), rng, 0.3, (50.0, 200.0))[:, None]
                poses[:, :2, 3] += shift
        plans.append(
            DrivePlan(
                index=index,
                role="test" if index >= drives - held_out else "train",
                region="trajectory",
                variant=variant,
                partner=partner,
                streets=(),
                path=poses[:, :2, 3].copy(),
                poses=poses,
                lighting=random_lighting(np.random.default_rng([seed, 200, index])),
                cars_seed=int(np.random.default_rng([seed, 300, index]).integers(2**31 - 1)),
            )
        )
    return plans
