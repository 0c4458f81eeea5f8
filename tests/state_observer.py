"""Look at files at every instant a command changes them: before each rename, link or delete.

A crash can happen between any two file-system operations. :func:`observe_file_changes` runs a
check before every rename, link, unlink and folder removal (Python audit events, which every
implementation goes through, whatever helper it uses) and once at the end, so a test sees each
state that a reader, or a resume after a kill, could find.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_EVENTS = {
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.link",
    "os.symlink",
    "shutil.rmtree",
    "ctypes.call_function",
}
_state = threading.local()
_active: list[Callable[[str], None]] = []
_installed = False


def _hook(event: str, args: tuple) -> None:
    if not _active or event not in _EVENTS or getattr(_state, "busy", False):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    _state.busy = True
    try:
        for check in list(_active):
            check(event)
    finally:
        _state.busy = False


@contextmanager
def observe_file_changes(check: Callable[[str], None]) -> Iterator[list[str]]:
    """Call ``check(event)`` before every file-system change in this thread, and once at the end.

    Yields the list of events seen (to assert that the observer did see the changes).
    """
    global _installed
    if not _installed:
        sys.addaudithook(_hook)  # cannot be removed: it does nothing while no observer is active
        _installed = True
    events: list[str] = []

    def record(event: str) -> None:
        events.append(event)
        check(event)

    _active.append(record)
    try:
        yield events
    finally:
        _active.remove(record)
    check("end")
