"""Requests that arrive together are embedded together: a micro-batcher in front of the encoder.

Each request puts its images on a queue and awaits its own future. One worker task takes the
first waiting request, then gathers others (until ``max_batch`` images), runs one forward pass and
search for all of them in a single worker thread (so the event loop keeps accepting requests
meanwhile), and hands each request its own rows. It waits for more only while other requests are
announced (still uploading or decoding, see :meth:`MicroBatcher.announce`), and never longer than
``max_wait_s``: a lone request does not wait at all. Under load the queue fills while a batch
runs, so the next batch forms without waiting. A request may name the function that runs its batch
(the map it started on, while the service reloads): one batch only holds requests of one function.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from liploc.localization.lidar_map import Match

T = TypeVar("T")
RunBatch = Callable[[Sequence[np.ndarray], int], list[list[Match]]]


@dataclass
class _Pending:
    images: Sequence[np.ndarray]
    k: int
    future: asyncio.Future[list[list[Match]]]
    run_batch: RunBatch
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What the batcher has done so far (reported by ``/health``)."""

    requests: int = 0
    images: int = 0
    batches: int = 0
    failed_batches: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "images": self.images,
            "batches": self.batches,
            "failed_batches": self.failed_batches,
            "mean_batch_images": round(self.images / self.batches, 3) if self.batches else 0.0,
            "largest_batch_images": max(self.batch_sizes, default=0),
        }


class MicroBatcher:
    """Batches concurrent ``submit`` calls into one ``run_batch(images, k)`` call at a time."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int,
        max_wait_s: float,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        """``thread_init``: run once in the batch thread before its first batch."""
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self.arriving = 0
        """Requests announced but not yet submitted (their bodies are being read or decoded)."""
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: the model runs one batch at a time, in order, off the event loop.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="liploc-batch", initializer=thread_init
        )

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="liploc-batcher")

    async def stop(self) -> None:
        """Finish the batch in flight, fail what still waits, and stop the worker."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def announce(self) -> Iterator[None]:
        """Wrap a request's reading and decoding: a batch being formed waits for announced requests."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def submit(
        self, images: Sequence[np.ndarray], k: int, run_batch: RunBatch | None = None
    ) -> list[list[Match]]:
        """Top-``k`` matches of each image, computed in a batch with other waiting requests of the
        same ``run_batch`` (default: the batcher's own)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[list[list[Match]]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(images, k, future, run_batch or self.run_batch))
        return await future

    async def run_alone(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the batch thread, between two batches: work that runs the network
        outside of a batch (sequence localization) never runs it at the same time as a batch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].images)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self.arriving == 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
                if size + len(item.images) > self.max_batch or item.run_batch != batch[0].run_batch:
                    # Keep it for the next batch rather than overshoot this one (or mix two maps).
                    await self._run(loop, batch)
                    batch, size = [item], len(item.images)
                    deadline = loop.time() + self.max_wait_s
                    continue
                batch.append(item)
                size += len(item.images)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a client that went away is skipped
        if not live:
            return
        images = [image for p in live for image in p.images]
        k = max(p.k for p in live)
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.images += len(images)
        self.stats.batch_sizes[len(images)] += 1
        try:
            results = await loop.run_in_executor(self._executor, live[0].run_batch, images, k)
        except Exception as err:
            self.stats.failed_batches += 1
            for p in live:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        start = 0
        for p in live:
            rows = results[start : start + len(p.images)]
            start += len(p.images)
            if not p.future.done():
                p.future.set_result([row[: p.k] for row in rows])
