"""Checks that read files but load no model: run by the commands before they import torch.

Typer's callbacks (:mod:`liploc.commands.options`) refuse a value that is wrong on its own. What
is wrong only against the files (a ``--set`` key the config does not have, a sequence the dataset
does not hold, a map drive that is the query drive, an output folder that is already there or
that another process is writing) is found here, from configs, manifests, lock files and folder
listings, so that a mistake is refused in a fraction of a second instead of after torch and timm
have loaded (4-6 s; 12 s on a busy machine). The library checks the same again when it runs:
these checks only move the refusal earlier, with the library's own messages.

Nothing here imports torch: :mod:`liploc.runtime.checkpoint` and the training and evaluation
packages do, so the few facts needed from them (where a checkpoint's manifest lies, the lock
file) are read directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from liploc.config import Config, config_from_dict, load_config
from liploc.errors import ConfigError, DataError, LiplocError
from liploc.runtime.run_folder import RunFolder, checkpoint_present, resolve_checkpoint

ONNX_SPEC_FILE = "preprocessing.json"
"""What marks an ONNX export folder (liploc.interop.onnx_export.SPEC_FILE)."""


# --- checkpoints and run folders -----------------------------------------------------------------
def require_checkpoint(run: Path) -> Path:
    """The checkpoint file ``run`` names (itself, or a run folder's best, else last), as
    :func:`liploc.runtime.run_folder.resolve_checkpoint` finds it; DataError when there is none."""
    return resolve_checkpoint(run)


def run_config(run: Path) -> Config | None:
    """The training config stored with ``run``'s checkpoint (its JSON manifest, no weights), or
    None when it cannot be read here (the command then finds out why when it loads the model)."""
    try:
        manifest = require_checkpoint(run).with_suffix(".json")
        record = json.loads(manifest.read_text(encoding="utf-8"))
        return config_from_dict(record["metadata"]["config"], source=f"{manifest} (config)")
    except (OSError, ValueError, KeyError, TypeError, LiplocError):
        return None


# --- datasets ------------------------------------------------------------------------------------
def dataset_sequences(data_root: Path, layout: str, typed: list[str]) -> list[str]:
    """The dataset's names of the sequences as typed (``8`` -> ``08``, frame ranges allowed);
    DataError naming the candidates when one is unknown or ambiguous."""
    from liploc.datasets import open_dataset
    from liploc.datasets.sequence_names import resolve_sequence_name

    reader = open_dataset(data_root, layout)
    known = reader.sequences()
    return [resolve_sequence_name(_range_sequence(name), known, data_root) for name in typed]


def _range_sequence(text: str) -> str:
    from liploc.datasets.sequence_range import SequenceRange

    try:
        return SequenceRange.parse(text).sequence
    except ValueError as err:
        raise ConfigError(f"sequence {err}") from None


def check_evaluation(
    run: Path,
    data_root: Path,
    layout: str,
    sequence: str,
    protocol: str | None,
    map_sequence: str | None,
    exclude_self: bool | None = None,
) -> None:
    """``liploc evaluate --sequence``: the protocol (given, else the run's ``eval.protocol``)
    against ``--map-sequence`` and ``--exclude-self``, the run's checkpoint, and the sequences
    against the dataset (the checks of liploc.evaluation.evaluate, with its words).

    Cross-drive localizes one drive in the map of another: a map drive that is the query drive
    (``--sequence 3 --map-sequence 03``) would report same-sequence figures as cross-drive ones.
    """
    if protocol is None:
        config = run_config(run)
        protocol = config.eval.protocol if config is not None else None
    if protocol == "cross-drive" and not map_sequence:
        raise ConfigError("the cross-drive protocol needs --map-sequence (the drive the map comes from)")
    if protocol not in (None, "cross-drive") and map_sequence and map_sequence != sequence:
        raise ConfigError(f"--map-sequence is only used by the cross-drive protocol, not by '{protocol}'")
    if exclude_self and protocol not in (None, "same-sequence"):
        why = (
            "queries and database are different drives"
            if protocol == "cross-drive"
            else "the revisit window already removes the query's own scan"
        )
        raise ConfigError(f"--exclude-self is for same-sequence evaluation, not '{protocol}' ({why})")
    require_checkpoint(run)
    typed = [sequence, *([map_sequence] if map_sequence else [])]
    names = dataset_sequences(data_root, layout, typed)
    if protocol == "cross-drive" and names[1] == names[0]:
        raise ConfigError(
            f"--map-sequence {map_sequence} is {names[0]}, the query drive itself: cross-drive localizes "
            "one drive in the map of another drive over the same streets. For one drive use --protocol "
            "same-sequence, or revisit (places the drive passes again)"
        )


# --- output folders ------------------------------------------------------------------------------
def _holds_something(folder: Path) -> bool:
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def check_map_output(out: Path, force: bool) -> None:
    """``map build --out``: an existing map (or other files) is replaced only with ``--force``."""
    if _holds_something(out) and not force:
        raise ConfigError(f"{out}: a map (or other files) already exists there; pass --force to replace it")


def check_export_output(out: Path, force: bool) -> None:
    """``export --out``: only an earlier export is replaced, and only with ``--force``."""
    if not _holds_something(out):
        return
    if not out.is_dir() or not (out / ONNX_SPEC_FILE).is_file():
        raise DataError(out, "exists and is not a liploc ONNX export folder; refusing to overwrite it")
    if not force:
        raise ConfigError(f"{out}: an ONNX export already exists there; pass --force to replace it")


def check_import_output(out: Path) -> None:
    """``import lip-loc --out``: a folder that already holds a checkpoint is not written over."""
    folder = RunFolder(out)
    for existing in (folder.best_checkpoint, folder.last_checkpoint):
        if checkpoint_present(existing):
            raise DataError(existing, "already exists; import into a new run folder (--out)")


def refuse_busy_folder(folder: Path) -> None:
    """LiplocError when another process holds ``folder``'s lock (:class:`RunLock`'s ``.lock``).

    A non-blocking probe: the lock is taken shared and let go at once (nothing is created).
    Under torchrun only rank 0 probes: the other ranks start while rank 0 takes the lock.
    """
    lock = RunFolder(folder).lock
    if int(os.environ.get("RANK", "0") or 0) != 0 or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # the writer will say what is wrong with the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            return
        holder = ""
        with contextlib.suppress(OSError):
            holder = lock.read_text(encoding="utf-8").strip()
        raise LiplocError(
            f"{folder}: another process is writing this run folder ({holder or 'holder unknown'}); "
            "wait for it to finish or stop it, or choose another --out"
        ) from None
    finally:
        os.close(fd)


# --- training configs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRun:
    """The config and run folder ``liploc train`` (or ``cache warm``) will use."""

    config: Config
    out: Path


def training_run(
    config: Path, data_roots: list[str] | None, overrides: list[str] | None, out: Path | None
) -> TrainingRun:
    """The config with its ``--set`` overrides and ``--data-root`` values (None: none), and the run
    folder, as :func:`liploc.training.train.configure_run` makes them (ConfigError for an unknown
    key, a value of the wrong kind or an override without ``=``)."""
    from liploc.runtime.data_roots import resolve_data_roots

    run_dir = None
    if config.is_dir():
        run_dir = config
        config = RunFolder(config).config
        if not config.is_file():
            raise ConfigError(f"{run_dir}: a folder was given but it holds no config.yaml (not a run folder)")
    cfg = resolve_data_roots(load_config(config, overrides or []), data_roots or [])
    return TrainingRun(cfg, out if out is not None else (run_dir or Path("runs") / cfg.name))


def check_training_folder(out: Path, resume: bool) -> None:
    """``liploc train``: the run folder is free (no other writer) and holds a run exactly when
    ``--resume`` asks to continue one."""
    refuse_busy_folder(out)
    folder = RunFolder(out)
    has_run = checkpoint_present(folder.last_checkpoint)
    if resume and not has_run:
        raise DataError(folder.last_checkpoint, "cannot resume: no last checkpoint in this run folder")
    if not resume and has_run:
        raise ConfigError(
            f"{out}: run folder already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )
