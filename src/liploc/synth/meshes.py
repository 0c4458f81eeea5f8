"""Triangle meshes of the town: primitive shapes and a builder that tags each triangle with a part.

A *part* is one surface with one look (a wall of a building, a roof, a tree crown, a car body): its
material, colours and texture parameters live in a ``PartTable`` row, and every triangle stores the
row of its part. Parts of one thing (the walls and roof of a building) share an ``object_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from liploc.synth.materials import LIDAR_REFLECTIVITY, Material
from liploc.synth.row_table import RowTable


@dataclass(frozen=True, eq=False)
class PartTable(RowTable):
    """Per-part attributes, one row per part.

    Attributes:
        material: (P,) uint8 ``Material`` numbers.
        albedo: (P, 3) float32 linear RGB base colour.
        albedo2: (P, 3) float32 second colour (window glass of a facade).
        origin: (P, 3) float32 start of a wall (texture coordinates are measured from it).
        tangent: (P, 2) float32 unit direction along a wall.
        tex: (P, 8) float32 facade parameters (``textures.FACADE_TEX_FIELDS``).
        reflectivity: (P,) float32 LiDAR reflectance at normal incidence.
        object_id: (P,) int32 the thing the part belongs to.
    """

    material: np.ndarray
    albedo: np.ndarray
    albedo2: np.ndarray
    origin: np.ndarray
    tangent: np.ndarray
    tex: np.ndarray
    reflectivity: np.ndarray
    object_id: np.ndarray


@dataclass(frozen=True, eq=False)
class TriangleMesh:
    """Triangles with the part of each one.

    Attributes:
        vertices: (V, 3) float32 world coordinates (metres, z up).
        faces: (F, 3) int32 vertex indices.
        face_part: (F,) int32 row of ``parts`` for each face.
        parts: the part table.
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_part: np.ndarray
    parts: PartTable

    @property
    def n_objects(self) -> int:
        """Number of distinct objects."""
        return int(np.unique(self.parts.object_id).size) if len(self.parts) else 0

    @staticmethod
    def concatenate(meshes: list[TriangleMesh]) -> TriangleMesh:
        """One mesh holding all ``meshes`` (faces and parts renumbered)."""
        vertices, faces, face_part = [], [], []
        n_vertices = 0
        n_parts = 0
        for mesh in meshes:
            vertices.append(mesh.vertices)
            faces.append(mesh.faces + n_vertices)
            face_part.append(mesh.face_part + n_parts)
            n_vertices += len(mesh.vertices)
            n_parts += len(mesh.parts)
        return TriangleMesh(
            vertices=np.concatenate(vertices).astype(np.float32),
            faces=np.concatenate(faces).astype(np.int32),
            face_part=np.concatenate(face_part).astype(np.int32),
            parts=PartTable.concatenate([m.parts for m in meshes]),
        )


@dataclass
class MeshBuilder:
    """Collects primitives and parts; ``build()`` returns the TriangleMesh."""

    first_object_id: int = 0
    _vertices: list[np.ndarray] = field(default_factory=list)
    _faces: list[np.ndarray] = field(default_factory=list)
    _face_parts: list[np.ndarray] = field(default_factory=list)
    _parts: list[tuple] = field(default_factory=list)
    _n_vertices: int = 0
    _n_objects: int = 0

    def new_object(self) -> int:
        """A fresh object id."""
        self._n_objects += 1
        return self.first_object_id + self._n_objects - 1

    def add_part(
        self,
        material: Material,
        albedo: tuple[float, float, float] | np.ndarray,
        object_id: int,
        *,
        albedo2: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
        origin: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
        tangent: tuple[float, float] | np.ndarray = (1.0, 0.0),
        tex: tuple[float, ...] | np.ndarray = (0.0,) * 8,
        reflectivity: float | None = None,
    ) -> int:
        """Add a part row and return its index."""
        if reflectivity is None:
            reflectivity = float(LIDAR_REFLECTIVITY[int(material)])
        self._parts.append((int(material), albedo, albedo2, origin, tangent, tex, reflectivity, object_id))
        return len(self._parts) - 1

    def add(self, vertices: np.ndarray, faces: np.ndarray, part: int | np.ndarray) -> None:
        """Add triangles; ``part`` is one part index or one per face."""
        self._vertices.append(np.asarray(vertices, dtype=np.float32))
        self._faces.append(np.asarray(faces, dtype=np.int32) + self._n_vertices)
        self._face_parts.append(np.broadcast_to(np.asarray(part, dtype=np.int32), (len(faces),)))
        self._n_vertices += len(vertices)

    def build(self) -> TriangleMesh:
        """The mesh of everything added so far."""
        rows = list(zip(*self._parts, strict=True)) if self._parts else [[]] * 8
        parts = PartTable(
            material=np.array(rows[0], dtype=np.uint8),
            albedo=np.array(rows[1], dtype=np.float32).reshape(-1, 3),
            albedo2=np.array(rows[2], dtype=np.float32).reshape(-1, 3),
            origin=np.array(rows[3], dtype=np.float32).reshape(-1, 3),
            tangent=np.array(rows[4], dtype=np.float32).reshape(-1, 2),
            tex=np.array(rows[5], dtype=np.float32).reshape(-1, 8),
            reflectivity=np.array(rows[6], dtype=np.float32),
            object_id=np.array(rows[7], dtype=np.int32),
        )
        if not self._faces:
            return TriangleMesh(
                np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.int32), parts
            )
        return TriangleMesh(
            vertices=np.concatenate(self._vertices),
            faces=np.concatenate(self._faces),
            face_part=np.concatenate(self._face_parts),
            parts=parts,
        )


# --- primitives ------------------------------------------------------------------------------
# Each returns (vertices (n, 3), faces (m, 3)) and, where faces form groups, a group per face.


def rectangle_corners(cx: float, cy: float, yaw: float, length: float, width: float) -> np.ndarray:
    """(4, 2) corners of an oriented rectangle, counter-clockwise from (-l/2, -w/2)."""
    local = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * [length, width]
    c, s = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[c, -s], [s, c]])
    return local @ rotation.T + [cx, cy]


_BOX_FACES = np.array(
    [
        [0, 1, 5],
        [0, 5, 4],
        [1, 2, 6],
        [1, 6, 5],
        [2, 3, 7],
        [2, 7, 6],
        [3, 0, 4],
        [3, 4, 7],
        [4, 5, 6],
        [4, 6, 7],
    ]
)
BOX_FACE_GROUPS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
"""Group of each box face: walls 0-3 (wall i runs from corner i to corner i+1), 4 the top."""


def box(corners: np.ndarray, z0: float, z1: float) -> tuple[np.ndarray, np.ndarray]:
    """A vertical prism over a quadrilateral footprint (no bottom face)."""
    bottom = np.column_stack([corners, np.full(4, z0)])
    top = np.column_stack([corners, np.full(4, z1)])
    return np.vstack([bottom, top]), _BOX_FACES


_GABLE_FACES = np.array([[0, 1, 5], [0, 5, 4], [2, 3, 4], [2, 4, 5], [1, 2, 5], [3, 0, 4]])
GABLE_FACE_GROUPS = np.array([4, 4, 4, 4, 1, 3])
"""Group of each gable-roof face: 4 the two roof slopes, 1 and 3 the gable ends above walls 1, 3."""


def gable_roof(corners: np.ndarray, z_eave: float, rise: float) -> tuple[np.ndarray, np.ndarray]:
    """A ridge roof over a rectangle whose ridge runs along its first side (corner 0 -> 1)."""
    eave = np.column_stack([corners, np.full(4, z_eave)])
    ridge_start = 0.5 * (corners[0] + corners[3])
    ridge_end = 0.5 * (corners[1] + corners[2])
    ridge = np.array([[*ridge_start, z_eave + rise], [*ridge_end, z_eave + rise]])
    return np.vstack([eave, ridge]), _GABLE_FACES


def vertical_cylinder(
    cx: float, cy: float, radius: float, z0: float, z1: float, sides: int = 6, top_radius: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A vertical prism (or frustum / cone when ``top_radius`` differs) with a top cap."""
    top_radius = radius if top_radius is None else top_radius
    angles = np.arange(sides) * (2 * np.pi / sides)
    ring = np.column_stack([np.cos(angles), np.sin(angles)])
    bottom = np.column_stack([cx + radius * ring[:, 0], cy + radius * ring[:, 1], np.full(sides, z0)])
    top = np.column_stack([cx + top_radius * ring[:, 0], cy + top_radius * ring[:, 1], np.full(sides, z1)])
    i = np.arange(sides)
    j = (i + 1) % sides
    walls = np.concatenate([np.column_stack([i, j, j + sides]), np.column_stack([i, j + sides, i + sides])])
    vertices = np.vstack([bottom, top, [[cx, cy, z1]]])
    cap = np.column_stack([i + sides, j + sides, np.full(sides, 2 * sides)])
    return vertices, np.concatenate([walls, cap])


def cylinder_between(
    p0: np.ndarray, p1: np.ndarray, radius: float, sides: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """A capped cylinder whose axis runs from ``p0`` to ``p1`` (any direction)."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    axis = p1 - p0
    axis /= np.linalg.norm(axis)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    angles = np.arange(sides) * (2 * np.pi / sides)
    ring = radius * (np.cos(angles)[:, None] * e1 + np.sin(angles)[:, None] * e2)
    vertices = np.vstack([p0 + ring, p1 + ring, [p0, p1]])
    i = np.arange(sides)
    j = (i + 1) % sides
    faces = np.concatenate(
        [
            np.column_stack([i, j, j + sides]),
            np.column_stack([i, j + sides, i + sides]),
            np.column_stack([j, i, np.full(sides, 2 * sides)]),
            np.column_stack([i + sides, j + sides, np.full(sides, 2 * sides + 1)]),
        ]
    )
    return vertices, faces


def icosphere(subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere from a subdivided icosahedron (20 * 4**subdivisions faces)."""
    t = (1.0 + 5**0.5) / 2.0
    vertices = [
        [-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
        [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1],
    ]  # fmt: skip
    faces = [
        [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
        [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
        [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
    ]  # fmt: skip
    verts = [np.array(v, dtype=np.float64) / np.linalg.norm(v) for v in vertices]
    for _ in range(subdivisions):
        midpoint: dict[tuple[int, int], int] = {}

        def middle(a: int, b: int, verts: list = verts, midpoint: dict = midpoint) -> int:
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                midpoint[key] = len(verts) - 1
            return midpoint[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = middle(a, b), middle(b, c), middle(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new_faces
    return np.array(verts), np.array(faces)
