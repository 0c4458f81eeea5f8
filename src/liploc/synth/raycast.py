"""Ray casting against triangle meshes with Embree (through the ``embreex`` bindings).

Embree releases the GIL while it traces, so several threads can cast rays into one committed scene
at the same time.
"""

from __future__ import annotations

import numpy as np

from liploc.errors import LiplocError


class MeshRayCaster:
    """Closest-hit and occlusion queries against a fixed triangle mesh."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        try:
            from embreex import rtcore_scene
            from embreex.mesh_construction import TriangleMesh as EmbreeMesh
        except ImportError as err:  # pragma: no cover - depends on the installed extras
            raise LiplocError(
                "liploc synth needs Embree ray casting: install the 'synth' extra "
                f"(pip install 'liploc[synth]'): {err}"
            ) from None
        self.n_faces = len(faces)
        self._scene = None
        if self.n_faces == 0:
            return
        self._scene = rtcore_scene.EmbreeScene()
        EmbreeMesh(
            self._scene, np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.int32)
        )
        # Embree commits the scene on the first query; do it now, before threads share the scene.
        probe = np.zeros((1, 3), np.float32)
        self._scene.run(probe, np.array([[0.0, 0.0, 1.0]], np.float32))

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest hit of each ray.

        Args:
            origins: (N, 3) ray origins.
            dirs: (N, 3) unit directions.

        Returns:
            (t, face, normal): (N,) float32 distance (inf for a miss), (N,) int32 face index (-1 for
            a miss), (N, 3) float32 unnormalised geometric normal.
        """
        n = len(origins)
        if self._scene is None or n == 0:
            return np.full(n, np.inf, np.float32), np.full(n, -1, np.int32), np.zeros((n, 3), np.float32)
        result = self._scene.run(
            np.ascontiguousarray(origins, np.float32), np.ascontiguousarray(dirs, np.float32), output=1
        )
        face = result["primID"].astype(np.int32)
        t = np.where(face >= 0, result["tfar"], np.inf).astype(np.float32)
        return t, face, result["Ng"]

    def occluded(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """(N,) bool: True where the ray meets any triangle."""
        n = len(origins)
        if self._scene is None or n == 0:
            return np.zeros(n, dtype=bool)
        hit = self._scene.run(
            np.ascontiguousarray(origins, np.float32),
            np.ascontiguousarray(dirs, np.float32),
            query="OCCLUDED",
        )
        return np.asarray(hit) >= 0
