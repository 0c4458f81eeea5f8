"""``liploc map build`` as a rank of ``torchrun`` would run it, recording what this rank embeds.

``python -m torch.distributed.run --nproc_per_node=2 tests/map_build_ranks.py RECORD -- ARGS...``
runs ``liploc map build ARGS...`` in every process, through the command line, and writes the
frames each rank embedded to ``RECORD/rank-<RANK>.json`` (the test checks the shares are disjoint)
and the rows of embeddings each rank received from the gather to ``RECORD/gathered-<RANK>.json``
(null: none, as for every rank but 0).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from liploc.cli import main
from liploc.localization import embedding
from liploc.runtime import process_group


def record_embedded_frames(record: Path) -> None:
    """Wrap :func:`embedding.embed_frames` (``build_map`` imports it at call time) so that each
    call appends its frames to this rank's record file."""
    real = embedding.embed_frames
    path = record / f"rank-{os.environ.get('RANK', '0')}.json"

    def recording(model, frames, *args, **kwargs):  # type: ignore[no-untyped-def]
        done = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(done + [f"{f.sequence}/{f.index}" for f in frames]))
        return real(model, frames, *args, **kwargs)

    embedding.embed_frames = recording  # type: ignore[assignment]


def record_gathered_rows(record: Path) -> None:
    """Wrap :func:`process_group.gather_uneven_to_main` (imported by ``build_map`` at call time) so
    that each rank writes how many rows it received."""
    real = process_group.gather_uneven_to_main
    path = record / f"gathered-{os.environ.get('RANK', '0')}.json"

    def recording(tensor):  # type: ignore[no-untyped-def]
        out = real(tensor)
        path.write_text(json.dumps(None if out is None else int(out.shape[0])))
        return out

    process_group.gather_uneven_to_main = recording  # type: ignore[assignment]


if __name__ == "__main__":
    torch.set_num_threads(1)
    record_embedded_frames(Path(sys.argv[1]))
    record_gathered_rows(Path(sys.argv[1]))
    sys.argv = ["liploc", "map", "build", *sys.argv[sys.argv.index("--") + 1 :]]
    main()
