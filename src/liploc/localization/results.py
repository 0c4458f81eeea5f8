"""Localization results that show themselves: a table for a person, JSON for a program.

``liploc localize`` prints :meth:`LocalizedImage.table` (or ``--json``: :meth:`LocalizedImage.to_json`)
and ``liploc serve`` answers with the same JSON, so that a script can switch between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from rich.table import Table

from liploc.console import new_table
from liploc.localization.map_folder import match_json, path_json

if TYPE_CHECKING:
    from liploc.localization.lidar_map import Match


@dataclass(frozen=True, eq=False)
class LocalizedImage:
    """The top-k map entries of one camera image, best first."""

    image: str
    """The image's name (its path for the CLI, the upload's name for the service)."""
    matches: list[Match]

    def to_json(self) -> dict[str, Any]:
        """``{"image": name, "matches": [match_json, ...]}``."""
        return {"image": self.image, "matches": [match_json(m) for m in self.matches]}

    def table(self) -> Table:
        """One row per returned pose, titled with the image (see :func:`matches_table`)."""
        return matches_table(self.image, self.matches)


@dataclass(frozen=True, eq=False)
class LocalizedSequence:
    """The last of several consecutive images localized by sequence matching, with the best path.

    Attributes:
        images: the images' names, oldest first.
        matches: the best map places of the last image; ``score`` is the path's mean normalised
            similarity (z-score units).
        path: each image's map place on the best path (``score``: its cosine similarity), or
            None where the path ran off the map.
        travelled_m: metres driven between consecutive images, when known.
    """

    images: list[str]
    matches: list[Match]
    path: list[Match | None]
    travelled_m: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The last image, all images, the distances, its matches and the path's steps."""
        return {
            "image": self.images[-1],
            "images": list(self.images),
            "travelled_m": self.travelled_m,
            "matches": [match_json(m) for m in self.matches],
            "path": [path_json(image, m) for image, m in zip(self.images, self.path, strict=True)],
        }

    def tables(self) -> tuple[Table, Table]:
        """The last image's poses (score in z units) and the best path, oldest image first.

        Both look like :func:`matches_table` (no box, no column cut): the path names each image
        by its file name, and its title says once which folder they share, so that a long
        folder does not squeeze every row to the same ``…/02/im…``.
        """
        last = f"{self.images[-1]} (sequence of {len(self.images)} images; score: the path's, z units)"
        table = matches_table(last, self.matches)
        folder, names = _common_folder(self.images)
        where = f"; images in {folder}" if folder else ""
        columns = ("image", "sequence", "frame", "x (m)", "y (m)", "cosine")
        path = new_table(*columns, title=f"best path (oldest image first{where})", right=columns[2:])
        for name, step in zip(names, self.path, strict=True):
            if step is None:
                path.add_row(name, "off map", "", "", "", "")
            else:
                x, y = step.xy
                path.add_row(
                    name, step.sequence, str(step.frame_index), f"{x:.1f}", f"{y:.1f}", f"{step.score:.3f}"
                )
        return table, path


def _common_folder(images: Sequence[str]) -> tuple[str, list[str]]:
    """The folder the images share (or "") and each image's name below it."""
    parents = {str(PurePath(image).parent) for image in images}
    if len(parents) != 1 or parents == {"."}:
        return "", list(images)
    (folder,) = parents
    return folder, [PurePath(image).name for image in images]


def matches_table(title: str, matches: Sequence[Match]) -> Table:
    """The table of ``localize``: one row per returned pose (fits 80 columns with raw drive names)."""
    columns = ("rank", "score", "sequence", "frame", "x (m)", "y (m)", "yaw\n(deg)")
    table = new_table(*columns, title=title, right=tuple(c for c in columns if c != "sequence"))
    for m in matches:
        table.add_row(
            str(m.rank),
            f"{m.score:.3f}",
            m.sequence,
            str(m.frame_index),
            f"{m.xy[0]:.1f}",
            f"{m.xy[1]:.1f}",
            f"{m.yaw_deg:.0f}",
        )
    return table
