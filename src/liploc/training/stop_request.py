"""Stopping on a signal: SIGINT/SIGTERM end training after the current step, on every process."""

from __future__ import annotations

import signal
from typing import Any

import torch
import torch.distributed as dist

from liploc.training import distributed


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step and save (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pending is not None:
            self._pending[0].wait()  # every process started it: none is left waiting
            self._pending = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step).

        Under DDP the answer is one step late: each call starts an asynchronous MAX of the
        flags over a CPU (gloo) group and reads the one started at the previous call, which has
        long finished. So no step waits for the device or for the other processes, and all of
        them still stop after the same step.
        """
        if not distributed.is_distributed():
            return self.requested
        if self._group is None:
            # Collective, and every process calls agreed() at the same steps.
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item() > 0)
        flag = torch.tensor([1.0 if self.requested else 0.0])
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return stop
