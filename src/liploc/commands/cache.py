"""``liploc cache warm|info|clear``: the shared preprocessing cache (the work:
:mod:`liploc.runtime.cache_warming` and :mod:`liploc.runtime.preprocess_cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liploc.commands._common import console, reported_errors
from liploc.commands.options import DataRoots, Overrides, examples
from liploc.console import progress_bar

HELP = "The shared preprocessing cache: fill it, see its size, clear it."
"""What ``liploc cache --help`` says of the group."""
WARM_EPILOG = examples(
    "liploc cache warm configs/kitti_resnet50.yaml --data-root /data/kitti/dataset",
    "liploc cache warm configs/tiny.yaml --data-root data/town --workers 2 --set data.image_size=[64,64]",
)
INFO_EPILOG = examples("liploc cache info", "liploc cache info --cache-dir /scratch/liploc-cache")
CLEAR_EPILOG = examples("liploc cache clear", "liploc cache clear --cache-dir /scratch/liploc-cache")

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Cache folder (default: data.cache_dir, else $LIPLOC_CACHE_DIR or ~/.cache/liploc/preprocess).",
    ),
]
Config = Annotated[
    Path, typer.Argument(metavar="CONFIG", help="Config YAML whose data (every split) to preprocess.")
]
Workers = Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")]


def warm(
    config: Config,
    data_root: DataRoots = None,
    cache_dir: CacheDir = None,
    overrides: Overrides = None,
    workers: Workers = None,
) -> None:
    """Preprocess every frame of a config's datasets into the shared cache, with all cores."""
    from liploc.commands.preflight import training_run

    with reported_errors(writing=cache_dir):
        cfg = training_run(config, data_root, overrides, None).config  # before torch
        from liploc.runtime.cache_warming import warm_cache
        from liploc.runtime.preprocess_cache import cache_usage, human_bytes

        with progress_bar(console, transient=False) as progress:
            result = warm_cache(cfg, cache_dir or cfg.data.cache_dir, workers, progress)
        usage = cache_usage(result.folder.parent)
    console.print(
        f"cache {result.folder}: {result.made} entries made, {result.present} already there "
        f"({result.frames} frames; cache now {usage.entries} entries, {human_bytes(usage.bytes)})"
    )


def info(cache_dir: CacheDir = None) -> None:
    """Entries and size of the preprocessing cache, per preprocessing setting."""
    from liploc.runtime.preprocess_cache import cache_usage, human_bytes

    usage = cache_usage(_cache_folder(cache_dir))
    console.print(f"{usage.folder}: {usage.entries} entries, {human_bytes(usage.bytes)}")
    for key, (n, size) in usage.per_settings.items():
        console.print(f"  settings {key}: {n} entries, {human_bytes(size)}")


def clear(cache_dir: CacheDir = None) -> None:
    """Remove every entry of the preprocessing cache (it is rebuilt as needed)."""
    from liploc.runtime.preprocess_cache import clear_cache, human_bytes

    usage = clear_cache(_cache_folder(cache_dir))
    console.print(f"cleared {usage.folder}: freed {human_bytes(usage.bytes)} ({usage.entries} entries)")


def _cache_folder(cache_dir: Path | None) -> Path:
    from liploc.runtime.preprocess_cache import default_cache_dir

    return cache_dir if cache_dir is not None else default_cache_dir()
