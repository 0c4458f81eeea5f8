"""Named instants at which a fault-injection run kills its own process (tests/faults/replay.py).

``LIPLOC_FAULT_KILL_AT=checkpoint.weights_written liploc train ...`` makes the process SIGKILL
itself when it reaches that instant, as a power cut or the OOM killer would. Without the variable
:func:`fault_point` costs one environment look-up.
"""

from __future__ import annotations

import os
import signal

ENV = "LIPLOC_FAULT_KILL_AT"

INSTANTS = (
    "checkpoint.weights_written",
    "checkpoint.previous_kept",
    "checkpoint.manifest_renamed",
    "checkpoint.alias_linked",
    "map.embeddings_written",
    "map.folder_written",
    "map.swapped",
    "cache.entry_written",
)
"""Every instant a fault run can name (each marks the moment just after the step it names)."""


def fault_point(name: str) -> None:
    """SIGKILL this process if ``LIPLOC_FAULT_KILL_AT`` names this instant."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
