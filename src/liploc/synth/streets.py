"""Street networks: a perturbed grid with loops (procedural towns) or a chain along a trajectory.

Streets are straight segments between nodes. Each carries its cross-section (lanes, parking lanes,
sidewalks) and a region tag: drives of the training region never use held-out streets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LANE_WIDTH_M = 3.0
PARKING_LANE_WIDTH_M = 2.0

REGION_TRAIN = 0
REGION_HELD_OUT = 1
REGION_BUFFER = -1
"""Streets between the regions, used by no drive (keeps held-out streets out of training views)."""


@dataclass(frozen=True, eq=False)
class StreetNetwork:
    """Nodes and straight street segments.

    Attributes:
        nodes: (N, 2) float64 node positions (metres).
        edges: (E, 2) int node indices of each street segment.
        lanes: (E,) lanes per direction.
        parking: (E,) bool, parking lanes on both sides.
        sidewalk: (E,) sidewalk width (metres).
        region: (E,) ``REGION_TRAIN``, ``REGION_HELD_OUT`` or ``REGION_BUFFER``.
        junction_clearance: (E, 2) distance from each end node kept free of markings, parked cars
            and kerbside objects (the crossing street's half width and sidewalk; 0 at a bend).
    """

    nodes: np.ndarray
    edges: np.ndarray
    lanes: np.ndarray
    parking: np.ndarray
    sidewalk: np.ndarray
    region: np.ndarray
    junction_clearance: np.ndarray

    @property
    def half_width(self) -> np.ndarray:
        """(E,) half width of the carriageway, kerb to centre line."""
        return self.lanes * LANE_WIDTH_M + np.where(self.parking, PARKING_LANE_WIDTH_M, 0.4)

    @property
    def starts(self) -> np.ndarray:
        return self.nodes[self.edges[:, 0]]

    @property
    def ends(self) -> np.ndarray:
        return self.nodes[self.edges[:, 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.linalg.norm(self.ends - self.starts, axis=1)

    @property
    def directions(self) -> np.ndarray:
        """(E, 2) unit vectors from start to end."""
        d = self.ends - self.starts
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)

    def degree(self) -> np.ndarray:
        """(N,) number of segments at each node."""
        return np.bincount(self.edges.reshape(-1), minlength=len(self.nodes))

    def incident(self) -> list[list[int]]:
        """Segments at each node."""
        out: list[list[int]] = [[] for _ in range(len(self.nodes))]
        for e, (a, b) in enumerate(self.edges):
            out[a].append(e)
            out[b].append(e)
        return out

    def total_length(self, region: int | None = None) -> float:
        """Street length in metres (of one region when given)."""
        mask = slice(None) if region is None else self.region == region
        return float(self.lengths[mask].sum())


def _junction_clearance(
    nodes: np.ndarray, edges: np.ndarray, half_width: np.ndarray, sidewalk: np.ndarray
) -> np.ndarray:
    incident: list[list[int]] = [[] for _ in range(len(nodes))]
    for e, (a, b) in enumerate(edges):
        incident[a].append(e)
        incident[b].append(e)
    clearance = np.zeros((len(edges), 2))
    for e, (a, b) in enumerate(edges):
        for end, node in enumerate((a, b)):
            others = [o for o in incident[node] if o != e]
            if len(others) >= 2 or (len(others) == 1 and _turn_angle(nodes, edges, e, others[0], node) > 0.6):
                clearance[e, end] = max(half_width[o] + sidewalk[o] for o in others) + 1.0
    return clearance


def _turn_angle(nodes: np.ndarray, edges: np.ndarray, e1: int, e2: int, node: int) -> float:
    """Angle (radians) between the two segments' directions away from ``node``."""

    def away(e: int) -> np.ndarray:
        a, b = edges[e]
        other = b if a == node else a
        d = nodes[other] - nodes[node]
        return d / max(np.linalg.norm(d), 1e-9)

    return float(np.pi - np.arccos(np.clip(np.dot(away(e1), away(e2)), -1.0, 1.0)))


def _connected(n_nodes: int, edges: list[tuple[int, int]]) -> bool:
    """True when the nodes touched by ``edges`` form one connected component."""
    if not edges:
        return True
    adjacency: dict[int, list[int]] = {}
    for a, b in edges:
        adjacency.setdefault(a, []).append(b)
        adjacency.setdefault(b, []).append(a)
    start = edges[0][0]
    seen = {start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in adjacency[node]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return len(seen) == len(adjacency)


def grid_network(
    rng: np.random.Generator, blocks: tuple[int, int], held_out_columns: int = 0
) -> StreetNetwork:
    """A perturbed grid of ``blocks`` (x, y) blocks with bends, missing streets and loops.

    The last ``held_out_columns`` columns of blocks form the held-out region; the grid line between
    the regions is a buffer street that no drive uses.
    """
    nx, ny = blocks
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(65.0, 120.0, nx))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(65.0, 115.0, ny))])
    node_index = {}
    nodes: list[np.ndarray] = []
    node_column: list[int] = []
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            node_index[i, j] = len(nodes)
            nodes.append(np.array([x, y]) + rng.uniform(-10.0, 10.0, 2))
            node_column.append(i)

    # Cross-section per grid line, so that a street keeps its width through junctions.
    def line_style() -> tuple[int, bool, float]:
        lanes = 2 if rng.random() < 0.1 else 1
        parking = bool(rng.random() < 0.8)
        return lanes, parking, float(rng.uniform(1.5, 2.5))

    column_styles = [line_style() for _ in xs]
    row_styles = [line_style() for _ in ys]
    split = nx - held_out_columns if held_out_columns > 0 else None

    grid_edges: list[tuple[int, int, tuple[int, bool, float], int]] = []
    for i in range(nx + 1):
        for j in range(ny + 1):
            if i < nx:  # street along x (a row of the grid)
                grid_edges.append(
                    (node_index[i, j], node_index[i + 1, j], row_styles[j], _region(split, i, i + 1))
                )
            if j < ny:  # street along y (a grid column)
                grid_edges.append(
                    (node_index[i, j], node_index[i, j + 1], column_styles[i], _region(split, i, i))
                )

    # Drop some streets (more loops of varied size), keeping every node on a loop and each region connected.
    order = rng.permutation(len(grid_edges))
    kept = np.ones(len(grid_edges), dtype=bool)
    degree = np.zeros(len(nodes), dtype=int)
    for a, b, _, _ in grid_edges:
        degree[a] += 1
        degree[b] += 1
    for k in order[: int(0.18 * len(grid_edges))]:
        a, b, _, region = grid_edges[k]
        if degree[a] <= 2 or degree[b] <= 2:
            continue
        kept[k] = False
        same_region = [
            (e[0], e[1]) for e, keep in zip(grid_edges, kept, strict=True) if keep and e[3] == region
        ]
        region_degree = (
            np.bincount(np.array(same_region).reshape(-1), minlength=len(nodes)) if same_region else None
        )
        if (
            not _connected(len(nodes), same_region)
            or region_degree is None
            or np.any(region_degree == 1)
            or not _connected(
                len(nodes), [(e[0], e[1]) for e, keep in zip(grid_edges, kept, strict=True) if keep]
            )
        ):
            kept[k] = True
            continue
        degree[a] -= 1
        degree[b] -= 1

    # Bend some streets: a middle node pushed sideways makes two segments and a gentle turn.
    node_list = list(nodes)
    edges: list[tuple[int, int]] = []
    styles: list[tuple[int, bool, float]] = []
    regions: list[int] = []
    for keep, (a, b, style, region) in zip(kept, grid_edges, strict=True):
        if not keep:
            continue
        if rng.random() < 0.3:
            pa, pb = node_list[a], node_list[b]
            direction = (pb - pa) / np.linalg.norm(pb - pa)
            normal = np.array([-direction[1], direction[0]])
            middle = 0.5 * (pa + pb) + normal * rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 11.0)
            node_list.append(middle)
            m = len(node_list) - 1
            edges += [(a, m), (m, b)]
            styles += [style, style]
            regions += [region, region]
        else:
            edges.append((a, b))
            styles.append(style)
            regions.append(region)

    return _network(np.array(node_list), edges, styles, regions)


def _region(split: int | None, column_a: int, column_b: int) -> int:
    if split is None:
        return REGION_TRAIN
    if column_a < split and column_b < split:
        return REGION_TRAIN
    if column_a > split and column_b > split:
        return REGION_HELD_OUT
    return REGION_BUFFER


def _network(
    nodes: np.ndarray, edges: list[tuple[int, int]], styles: list[tuple[int, bool, float]], regions: list[int]
) -> StreetNetwork:
    edge_array = np.array(edges, dtype=np.int64).reshape(-1, 2)
    lanes = np.array([s[0] for s in styles], dtype=np.int64)
    parking = np.array([s[1] for s in styles], dtype=bool)
    sidewalk = np.array([s[2] for s in styles], dtype=np.float64)
    half_width = lanes * LANE_WIDTH_M + np.where(parking, PARKING_LANE_WIDTH_M, 0.4)
    return StreetNetwork(
        nodes=np.asarray(nodes, dtype=np.float64),
        edges=edge_array,
        lanes=lanes,
        parking=parking,
        sidewalk=sidewalk,
        region=np.array(regions, dtype=np.int64),
        junction_clearance=_junction_clearance(nodes, edge_array, half_width, sidewalk),
    )


def simplify_path(xy: np.ndarray, tolerance: float = 0.5) -> np.ndarray:
    """Indices of the points of the polyline ``xy`` kept by Douglas-Peucker within ``tolerance``."""
    keep = np.zeros(len(xy), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(xy) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        a, b = xy[first], xy[last]
        ab = b - a
        length = np.linalg.norm(ab)
        pts = xy[first + 1 : last]
        if length < 1e-9:
            dist = np.linalg.norm(pts - a, axis=1)
        else:
            dist = np.abs(ab[0] * (pts[:, 1] - a[1]) - ab[1] * (pts[:, 0] - a[0])) / length
        worst = int(np.argmax(dist))
        if dist[worst] > tolerance:
            split = first + 1 + worst
            keep[split] = True
            stack += [(first, split), (split, last)]
    return np.flatnonzero(keep)


def path_network(xy: np.ndarray, rng: np.random.Generator, max_segment_m: float = 80.0) -> StreetNetwork:
    """Streets along a driven path: the path (already moved to the street centre) as a chain.

    Long straight stretches are cut into segments of at most ``max_segment_m`` so that the
    cross-section can change along them (districts), and stationary samples are dropped.
    """
    moving = [0]
    for i in range(1, len(xy)):
        if np.linalg.norm(xy[i] - xy[moving[-1]]) > 0.5:
            moving.append(i)
    pts = xy[moving]
    if len(pts) < 2:
        pts = np.array([xy[0], xy[0] + [max_segment_m, 0.0]])
    kept = pts[simplify_path(pts, 0.4)]
    nodes = [kept[0]]
    for p in kept[1:]:
        gap = np.linalg.norm(p - nodes[-1])
        pieces = max(1, int(np.ceil(gap / max_segment_m)))
        for k in range(1, pieces + 1):
            nodes.append(nodes[-1] + (p - nodes[-1]) * (1.0 / (pieces - k + 1)))
    nodes_array = np.array(nodes)
    edges = [(i, i + 1) for i in range(len(nodes_array) - 1)]
    style = (1, True, float(rng.uniform(2.5, 3.5)))
    return _network(nodes_array, edges, [style] * len(edges), [REGION_TRAIN] * len(edges))
