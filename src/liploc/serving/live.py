"""The service's map, replaced while it serves: ``POST /reload`` and SIGHUP load the map folder
again (after a ``liploc map add`` or a rebuild) and swap the new one in atomically.

A :class:`LiveService` holds the current :class:`Loaded` (a service with what the endpoints show
of its map) as one reference. Each request reads it once when it starts and uses that service to
the end, so a request in flight during a reload finishes on the old map and every request that
starts after the swap gets the new one; the micro-batcher never mixes the two in one batch. The
new map is loaded in a worker thread while the old one keeps answering; reloads take turns. If the
new map does not load (a damaged file, another model than ``--checkpoint``), the old one stays
and the error says why.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from liploc.errors import LiplocError
from liploc.serving.engine import MapService

log = logging.getLogger("liploc.serve")


@dataclass(frozen=True, eq=False)
class Loaded:
    """A loaded service and what the map endpoints answer about its map (computed once per load;
    the trajectory when first asked for)."""

    service: MapService
    metadata: dict[str, Any]
    generation: int
    """0 for the map the service started with, then 1, 2, ... per successful reload."""
    loaded_at: float
    """``time.time()`` when it was swapped in."""

    @classmethod
    def of(cls, service: MapService, generation: int) -> Loaded:
        return cls(service, service.metadata(), generation, time.time())

    @functools.cached_property
    def trajectory_json(self) -> bytes:
        """``/map/trajectory``'s body, encoded once on first use: for a 1,000,000-scan map the
        lists as Python objects would keep 137 MB resident from the start (50 MB as JSON text),
        and encoding them on every request takes seconds."""
        return json.dumps(self.service.trajectory(), separators=(",", ":")).encode()


class ReloadFailed(Exception):
    """The map folder did not load; the service keeps the map it has (``detail`` says why)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class LiveService:
    """The current :class:`Loaded`, and :meth:`reload`, which replaces it."""

    def __init__(self, service: MapService, reopen: Callable[[MapService], MapService] | None = None) -> None:
        """``reopen(service)``: a new service over the same map folder and options (default
        :meth:`MapService.reopen`)."""
        self._current = Loaded.of(service, 0)
        self._reopen = reopen or MapService.reopen
        self._lock: asyncio.Lock | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self.last_error: str | None = None

    @property
    def current(self) -> Loaded:
        """The map that new requests get (read it once per request)."""
        return self._current

    async def reload(self) -> dict[str, Any]:
        """Load the map folder again and swap it in; returns what changed (see ``POST /reload``).

        Raises:
            ReloadFailed: the new map did not load; the old one is still served.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one reload at a time; requests go on meanwhile
            old = self._current
            started = time.perf_counter()
            try:
                new = await asyncio.to_thread(self._load, old)
            except Exception as err:
                self.failed_reloads += 1
                detail = str(err) if isinstance(err, LiplocError) else f"{type(err).__name__}: {err}"
                if not isinstance(err, LiplocError):
                    log.exception("reloading the map failed")
                self.last_error = (
                    f"{detail}; still serving the previous map ({len(old.service.lidar_map)} scans)"
                )
                raise ReloadFailed(self.last_error) from err
            self._current = new  # one reference: a request sees the old map or the new one
            self.reloads += 1
            self.last_error = None
            return {
                "status": "reloaded",
                "map": new.service.name,
                "frames": len(new.service.lidar_map),
                "previous_frames": len(old.service.lidar_map),
                "sequences": sorted(set(new.service.lidar_map.sequences)),
                "index_kind": new.service.lidar_map.index.kind,
                "model_fingerprint": new.service.encoder.fingerprint,
                "generation": new.generation,
                "load_s": round(time.perf_counter() - started, 3),
            }

    def _load(self, old: Loaded) -> Loaded:
        return Loaded.of(self._reopen(old.service), old.generation + 1)

    def health(self) -> dict[str, Any]:
        """What ``/health`` says of the reloads."""
        return {
            "generation": self._current.generation,
            "loaded_at": round(self._current.loaded_at, 3),
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "last_reload_error": self.last_error,
        }
