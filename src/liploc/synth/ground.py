"""The ground, analytic rather than meshed: roads at z = 0, everything else raised by a kerb.

A point's ground material follows from its nearest street segment: carriageway (with markings),
kerb, sidewalk, and beyond it lots of grass or paving. A coarse raster lists for every cell the few
segments that can matter there, so a lookup costs a handful of point-to-segment distances.
Intersecting a ray with this stepped ground needs no triangles and has no seams at junctions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.materials import Material
from liploc.synth.streets import LANE_WIDTH_M, PARKING_LANE_WIDTH_M, StreetNetwork
from liploc.synth.textures import hash_uniform, value_noise

KERB_HEIGHT_M = 0.12
_CELL_M = 1.0
_CANDIDATES = 1


@dataclass(frozen=True, eq=False)
class GroundSample:
    """The nearest street of each query point and where the point lies across it.

    Attributes:
        segment: (N,) index of the nearest segment, -1 where no street is near.
        along: (N,) metres along that segment from its start (clamped to the segment).
        across: (N,) signed metres from its centre line (positive to the left of its direction).
        clearance: (N,) distance to the centre line minus the half width: < 0 on the carriageway.
    """

    segment: np.ndarray
    along: np.ndarray
    across: np.ndarray
    clearance: np.ndarray


@dataclass(frozen=True, eq=False)
class GroundMap:
    """Street geometry prepared for fast ground lookups.

    Attributes:
        streets: the network.
        origin: (2,) world position of the raster's corner.
        candidates: (H, W, K) int32 segments near each raster cell, -1 padded.
        seed: texture seed of the town.
    """

    streets: StreetNetwork
    origin: np.ndarray
    candidates: np.ndarray
    seed: int

    def __post_init__(self) -> None:
        # float32 copies of the segment geometry, gathered per lookup.
        st = self.streets
        object.__setattr__(self, "_start", st.starts.astype(np.float32))
        object.__setattr__(self, "_direction", st.directions.astype(np.float32))
        object.__setattr__(self, "_length", st.lengths.astype(np.float32))
        object.__setattr__(self, "_half_width", st.half_width.astype(np.float32))

    @staticmethod
    def build(streets: StreetNetwork, seed: int) -> GroundMap:
        """Prepare the candidate raster for ``streets``."""
        lo = streets.nodes.min(axis=0) - 40.0
        hi = streets.nodes.max(axis=0) + 40.0
        shape = np.ceil((hi - lo) / _CELL_M).astype(int)
        best = np.full((shape[0], shape[1], _CANDIDATES), np.inf, dtype=np.float32)
        best_id = np.full((shape[0], shape[1], _CANDIDATES), -1, dtype=np.int32)
        reach = streets.half_width + streets.sidewalk + _CELL_M + 0.5
        a, d, length = streets.starts, streets.directions, streets.lengths
        for e in range(len(streets.edges)):
            # Only the cells within reach of the segment's bounding box can list it.
            b = streets.ends[e]
            i0, j0 = np.clip(np.floor((np.minimum(a[e], b) - reach[e] - lo) / _CELL_M).astype(int), 0, shape)
            i1, j1 = np.clip(np.ceil((np.maximum(a[e], b) + reach[e] - lo) / _CELL_M).astype(int), 0, shape)
            if i1 <= i0 or j1 <= j0:
                continue
            gx = lo[0] + (np.arange(i0, i1) + 0.5) * _CELL_M - a[e, 0]
            gy = lo[1] + (np.arange(j0, j1) + 0.5) * _CELL_M - a[e, 1]
            rx, ry = np.meshgrid(gx, gy, indexing="ij")
            s = np.clip(rx * d[e, 0] + ry * d[e, 1], 0.0, length[e])
            dist = np.hypot(rx - s * d[e, 0], ry - s * d[e, 1]) - streets.half_width[e]
            near = dist < reach[e] - streets.half_width[e]
            if not near.any():
                continue
            # Insert into the per-cell list of the best candidates (smallest clearance first).
            window_best = best[i0:i1, j0:j1]
            window_id = best_id[i0:i1, j0:j1]
            cand = np.concatenate([window_best, np.where(near, dist, np.inf)[..., None]], axis=-1)
            cand_id = np.concatenate([window_id, np.full((*dist.shape, 1), e, dtype=np.int32)], axis=-1)
            order = np.argsort(cand, axis=-1, kind="stable")[..., :_CANDIDATES]
            best[i0:i1, j0:j1] = np.take_along_axis(cand, order, axis=-1)
            best_id[i0:i1, j0:j1] = np.where(
                np.isfinite(best[i0:i1, j0:j1]), np.take_along_axis(cand_id, order, axis=-1), -1
            )
        return GroundMap(streets=streets, origin=lo, candidates=best_id, seed=seed)

    def locate(self, xy: np.ndarray) -> GroundSample:
        """Nearest street (by clearance) of each point of ``xy`` (N, 2)."""
        n = len(xy)
        shape = self.candidates.shape
        cell = np.floor((xy - self.origin) / _CELL_M).astype(np.int64)
        inside = (cell[:, 0] >= 0) & (cell[:, 0] < shape[0]) & (cell[:, 1] >= 0) & (cell[:, 1] < shape[1])
        cand = np.full((n, _CANDIDATES), -1, dtype=np.int32)
        cand[inside] = self.candidates[cell[inside, 0], cell[inside, 1]]
        valid = cand >= 0
        seg = np.where(valid, cand, 0)
        a = self._start[seg]  # type: ignore[attr-defined]
        d = self._direction[seg]  # type: ignore[attr-defined]
        length = self._length[seg]  # type: ignore[attr-defined]
        rx = xy[:, 0:1].astype(np.float32) - a[..., 0]
        ry = xy[:, 1:2].astype(np.float32) - a[..., 1]
        dx, dy = d[..., 0], d[..., 1]
        along = np.clip(rx * dx + ry * dy, 0.0, length)
        across = dx * ry - dy * rx
        ex = rx - along * dx
        ey = ry - along * dy
        dist = np.sqrt(ex * ex + ey * ey)
        clearance = np.where(valid, dist - self._half_width[seg], np.float32(1e6))  # type: ignore[attr-defined]
        if _CANDIDATES == 1:  # one candidate per cell: nothing to choose
            return GroundSample(
                segment=np.where(valid[:, 0], cand[:, 0], -1),
                along=along[:, 0],
                across=across[:, 0],
                clearance=clearance[:, 0],
            )
        k = np.argmin(clearance, axis=1)[:, None]
        return GroundSample(
            segment=np.where(valid.any(axis=1), np.take_along_axis(cand, k, axis=1)[:, 0], -1),
            along=np.take_along_axis(along, k, axis=1)[:, 0],
            across=np.take_along_axis(across, k, axis=1)[:, 0],
            clearance=np.take_along_axis(clearance, k, axis=1)[:, 0],
        )

    def materials(self, xy: np.ndarray, sample: GroundSample | None = None) -> np.ndarray:
        """(N,) uint8 ground material at raised-level points ``xy`` (road points: see ``road_materials``)."""
        sample = self.locate(xy) if sample is None else sample
        st = self.streets
        seg = np.maximum(sample.segment, 0)
        sidewalk = np.where(sample.segment >= 0, st.sidewalk[seg], 0.0)
        on_sidewalk = sample.clearance < sidewalk
        lot_noise = value_noise(xy[:, 0] / 23.0, xy[:, 1] / 23.0, self.seed + 7)
        lot = np.where(lot_noise > 0.62, Material.PAVED, Material.GRASS)
        # Half of the streets have a strip of lawn between the kerb and the footway.
        verge = (sample.clearance < 0.5 * sidewalk) & self._has_verge(seg) & (sample.segment >= 0)
        walk = np.where(verge, Material.GRASS, Material.SIDEWALK)
        return np.where(on_sidewalk, walk, lot).astype(np.uint8)

    def _has_verge(self, seg: np.ndarray) -> np.ndarray:
        return hash_uniform(seg, np.ones_like(seg), self.seed + 9) < 0.5

    def road_materials(self, sample: GroundSample) -> np.ndarray:
        """(N,) uint8 ROAD or MARKING for points on the carriageway."""
        st = self.streets
        seg = np.maximum(sample.segment, 0)
        along, across = sample.along, sample.across
        length = st.lengths[seg]
        clear_start = st.junction_clearance[seg, 0]
        clear_end = st.junction_clearance[seg, 1]
        in_street = (along > clear_start) & (along < length - clear_end)
        a = np.abs(across)
        lanes = st.lanes[seg]
        # Centre line: dashed on one-lane streets, solid double line on avenues.
        dash = (along % 6.0) < 3.0
        centre = np.where(lanes >= 2, (np.abs(a - 0.15) < 0.06), (a < 0.07) & dash)
        # Lane divider of two-lane directions.
        divider = (lanes >= 2) & (np.abs(a - LANE_WIDTH_M) < 0.07) & dash
        # Edge line between the driving lanes and the parking lane (or the kerb).
        edge_at = lanes * LANE_WIDTH_M + np.where(st.parking[seg], 0.0, 0.1)
        edge = np.abs(a - edge_at) < 0.08
        lines = in_street & (centre | divider | edge)
        # Zebra crossings just before the junctions of wide streets.
        from_start = along - clear_start
        from_end = length - clear_end - along
        near_end = ((from_start > 0) & (from_start < 3.0) & (clear_start > 0)) | (
            (from_end > 0) & (from_end < 3.0) & (clear_end > 0)
        )
        zebra = (
            near_end & ((a % 1.2) < 0.6) & (a < lanes * LANE_WIDTH_M + PARKING_LANE_WIDTH_M * st.parking[seg])
        )
        zebra &= self._has_zebra(seg)
        marking = lines | zebra
        return np.where(marking, Material.MARKING, Material.ROAD).astype(np.uint8)

    def _has_zebra(self, seg: np.ndarray) -> np.ndarray:
        # A fixed half of the streets get crossings (hashing the segment index with the town seed).
        return hash_uniform(seg, np.zeros_like(seg), self.seed + 5) < 0.5

    def intersect(self, origins: np.ndarray, dirs: np.ndarray, t_max: np.ndarray | None = None) -> GroundHits:
        """First intersection of each downward ray with the stepped ground.

        Rays that do not point down, or whose ground hit would lie beyond ``t_max`` (something else
        was hit first), get ``t = inf``. A ray that first reaches kerb height above the carriageway
        goes on to the road, unless it meets the kerb face on the way.
        """
        n = len(origins)
        t = np.full(n, np.inf, dtype=np.float32)
        material = np.zeros(n, dtype=np.uint8)
        normal = np.zeros((n, 3), dtype=np.float32)
        normal[:, 2] = 1.0
        dz = dirs[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_first = np.where(dz < -1e-6, (KERB_HEIGHT_M - origins[:, 2]) / dz, np.inf)
        reach = t_first < (np.inf if t_max is None else t_max)
        down = np.flatnonzero(reach)
        if down.size == 0:
            return GroundHits(t, material, normal, down)
        o = origins[down]
        d = dirs[down]
        t_raised = t_first[down]
        xy_raised = o[:, :2] + t_raised[:, None] * d[:, :2]
        raised = self.locate(xy_raised)
        on_raised = raised.clearance >= 0
        t_road = -o[:, 2] / d[:, 2]
        # Rays that reach kerb height over a carriageway go on down to the road (or the kerb face).
        low = np.flatnonzero(~on_raised)
        xy_road = o[low, :2] + t_road[low, None] * d[low, :2]
        road = self.locate(xy_road)
        on_road = np.zeros(len(down), dtype=bool)
        on_road[low] = road.clearance < 0
        hit_t = np.where(on_raised, t_raised, np.where(on_road, t_road, 0.5 * (t_raised + t_road)))
        mat = np.full(len(down), Material.CURB, dtype=np.uint8)
        raised_idx = np.flatnonzero(on_raised)
        mat[raised_idx] = self.materials(xy_raised[raised_idx], _subset(raised, raised_idx))
        road_idx = np.flatnonzero(road.clearance < 0)
        mat[low[road_idx]] = self.road_materials(_subset(road, road_idx))
        kerb = ~on_raised & ~on_road
        if kerb.any():
            # The kerb face looks towards the carriageway it bounds.
            seg = np.maximum(raised.segment[kerb], 0)
            direction = self.streets.directions[seg]
            side = np.sign(raised.across[kerb])[:, None]
            normal_xy = np.column_stack([-direction[:, 1], direction[:, 0]]) * -side
            kerb_normal = np.zeros((kerb.sum(), 3), dtype=np.float32)
            kerb_normal[:, :2] = normal_xy
            sub = normal[down]
            sub[kerb] = kerb_normal
            normal[down] = sub
        t[down] = hit_t
        material[down] = mat
        return GroundHits(t, material, normal, down)


def _subset(sample: GroundSample, idx: np.ndarray) -> GroundSample:
    return GroundSample(sample.segment[idx], sample.along[idx], sample.across[idx], sample.clearance[idx])


@dataclass(frozen=True, eq=False)
class GroundHits:
    """Ground intersections of a batch of rays (``t = inf`` where the ground is not hit)."""

    t: np.ndarray
    material: np.ndarray
    normal: np.ndarray
    down: np.ndarray
