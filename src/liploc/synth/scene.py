"""What the sensors of one drive see: the town's static mesh, the drive's parked cars, the ground.

``Scene.cast`` returns, for any rays, the first surface hit with its material (windows and road
markings already decided by the textures), normal and part, for the camera and the LiDAR alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liploc.synth.ground import GroundMap
from liploc.synth.materials import Material
from liploc.synth.meshes import TriangleMesh
from liploc.synth.raycast import MeshRayCaster
from liploc.synth.textures import facade_windows, fence_gaps
from liploc.synth.vec3 import dot

SKY_OBJECT = -1
GROUND_OBJECT = -2


@dataclass(frozen=True, eq=False)
class SurfaceHits:
    """First surfaces met by a batch of rays.

    Attributes:
        t: (N,) float32 distance along each ray; inf where nothing is hit (sky).
        point: (N, 3) float32 hit points (undefined for misses).
        normal: (N, 3) float32 unit normals facing the ray origin.
        material: (N,) uint8 ``Material`` (``SKY`` for misses).
        part: (N,) int32 part of the mesh hit, -1 for the ground and the sky.
        object_id: (N,) int32 object hit; ``GROUND_OBJECT`` or ``SKY_OBJECT`` otherwise.
    """

    t: np.ndarray
    point: np.ndarray
    normal: np.ndarray
    material: np.ndarray
    part: np.ndarray
    object_id: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        """(N,) bool, True where a surface was hit."""
        return np.isfinite(self.t)


class Scene:
    """Static town mesh + one drive's parked cars + analytic ground, ready for ray casting."""

    def __init__(self, mesh: TriangleMesh, ground: GroundMap) -> None:
        self.mesh = mesh
        self.ground = ground
        self.parts = mesh.parts
        self._caster = MeshRayCaster(mesh.vertices, mesh.faces)

    def cast(self, origins: np.ndarray, dirs: np.ndarray, _depth: int = 0) -> SurfaceHits:
        """First hit of each ray (``origins`` and unit ``dirs``, (N, 3) in the world frame).

        Rays that meet a fence between its pickets go on through it (camera and LiDAR alike)."""
        t_mesh, face, normal_mesh = self._caster.intersect(origins, dirs)
        ground = self.ground.intersect(origins, dirs, t_max=t_mesh)
        on_ground = ground.t < t_mesh
        t = np.where(on_ground, ground.t, t_mesh)
        on_mesh = np.isfinite(t_mesh) & ~on_ground

        n = len(origins)
        part = np.full(n, -1, dtype=np.int32)
        part[on_mesh] = self.mesh.face_part[face[on_mesh]]
        material = np.zeros(n, dtype=np.uint8)
        material[on_ground] = ground.material[on_ground]
        idx = np.flatnonzero(on_mesh)
        material[idx] = self.parts.material[part[idx]]

        finite_t = np.where(np.isfinite(t), t, np.float32(0.0))
        point = origins + dirs * finite_t[:, None]

        normal = np.where(on_ground[:, None], ground.normal, normal_mesh)
        length = np.sqrt(dot(normal, normal))
        # Unit normals facing the ray origin (Embree's follow the triangle's winding).
        flip = np.where(dot(normal, dirs) > 0, np.float32(-1.0), np.float32(1.0))
        normal *= (flip / np.maximum(length, np.float32(1e-12)))[:, None]

        facade = idx[material[idx] == Material.FACADE]
        if facade.size:
            p = part[facade]
            rel = point[facade, :2] - self.parts.origin[p, :2]
            along = np.einsum("nc,nc->n", rel, self.parts.tangent[p])
            height = point[facade, 2] - self.parts.origin[p, 2]
            window = facade_windows(along, height, self.parts.tex[p])
            material[facade[window]] = Material.GLASS

        object_id = np.full(n, -1, dtype=np.int32)
        object_id[on_ground] = -2
        object_id[idx] = self.parts.object_id[part[idx]]
        hits = SurfaceHits(t=t, point=point, normal=normal, material=material, part=part, object_id=object_id)
        fence = idx[material[idx] == Material.FENCE]
        if fence.size and _depth < 2:
            self._through_fences(hits, fence, dirs, _depth)
        return hits

    def _through_fences(self, hits: SurfaceHits, fence: np.ndarray, dirs: np.ndarray, depth: int) -> None:
        """Send the rays that hit a fence between its pickets on, from just behind it (in place)."""
        p = hits.part[fence]
        rel = hits.point[fence, :2] - self.parts.origin[p, :2]
        along = np.einsum("nc,nc->n", rel, self.parts.tangent[p])
        height = hits.point[fence, 2] - self.parts.origin[p, 2]
        through = fence[fence_gaps(along, height, self.parts.tex[p])]
        if through.size == 0:
            return
        d = dirs[through]
        # Across the fence's 4 cm and a little more, however slanting the ray.
        slant = np.maximum(np.abs(dot(hits.normal[through], d)), np.float32(0.08))
        step = (np.float32(0.05) / slant).astype(np.float32)
        behind = self.cast(hits.point[through] + d * step[:, None], d, depth + 1)
        hits.t[through] = hits.t[through] + step + behind.t
        for name in ("point", "normal", "material", "part", "object_id"):
            getattr(hits, name)[through] = getattr(behind, name)

    def shadowed(self, points: np.ndarray, normals: np.ndarray, sun_direction: np.ndarray) -> np.ndarray:
        """(N,) bool: True where the sun is hidden from surface points (by the mesh)."""
        origins = points + normals * 0.03
        dirs = np.broadcast_to(sun_direction.astype(np.float32), points.shape)
        return self._caster.occluded(origins, dirs)

    def first_hit(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(t, face) of the first triangle of the mesh met by each ray (face -1 and t inf on a miss;
        the ground is not tested)."""
        t, face, _ = self._caster.intersect(origins, dirs)
        return t, face

    def occluded(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """(N,) bool: True where a ray meets any triangle of the mesh (the ground is not tested)."""
        return self._caster.occluded(origins, dirs)
