"""A sequence, or a range of its frames, as splits and protocols name them: ``00``, ``00[0:3000]``.

The range is over frame numbers (the numbers in the file names), half-open as in Python:
``00[0:3000]`` is frames 0-2999 of sequence 00, ``00[3000:]`` frame 3000 onward. Protocols need it
(kitti-a trains on the first 3000 frames of KITTI 00 and tests on the rest), and any split of a
config accepts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from liploc.datasets.frame import Frame

_SPEC = re.compile(r"^(?P<name>[^\[\]:\s]+)(?:\[(?P<start>\d*):(?P<stop>\d*)\])?$")


@dataclass(frozen=True)
class SequenceRange:
    """Frames ``start <= index < stop`` of ``sequence`` (None: no bound on that side)."""

    sequence: str
    start: int | None = None
    stop: int | None = None

    @staticmethod
    def parse(text: str) -> SequenceRange:
        """``"00"``, ``"00[0:3000]"``, ``"00[3000:]"``; ValueError saying what is wrong otherwise."""
        match = _SPEC.match(str(text).strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not a sequence name or a frame range like '00[0:3000]' or '00[3000:]'"
            )
        start = int(match["start"]) if match["start"] else None
        stop = int(match["stop"]) if match["stop"] else None
        if start is not None and stop is not None and stop <= start:
            raise ValueError(f"{text!r}: the range [{start}:{stop}] holds no frame (stop must exceed start)")
        return SequenceRange(match["name"], start, stop)

    @property
    def is_whole(self) -> bool:
        """True when the range is the whole sequence."""
        return self.start is None and self.stop is None

    def __str__(self) -> str:
        if self.is_whole:
            return self.sequence
        return f"{self.sequence}[{self._bounds(':')}]"

    @property
    def slug(self) -> str:
        """A file-name-safe form: ``00``, ``00_0-3000``, ``00_3000-end``."""
        if self.is_whole:
            return self.sequence
        return f"{self.sequence}_{self._bounds('-', 'start', 'end')}"

    def _bounds(self, sep: str, first: str = "", last: str = "") -> str:
        start = first if self.start is None else str(self.start)
        stop = last if self.stop is None else str(self.stop)
        return f"{start}{sep}{stop}"

    def contains(self, index: int) -> bool:
        """True when frame number ``index`` is in the range."""
        return (self.start is None or index >= self.start) and (self.stop is None or index < self.stop)

    def select(self, frames: Iterable[Frame]) -> list[Frame]:
        """The frames of the range (``frames`` of this sequence, in their order)."""
        return [f for f in frames if self.contains(f.index)]

    def overlaps(self, other: SequenceRange) -> bool:
        """True when both name the same sequence and share at least one frame number."""
        if self.sequence != other.sequence:
            return False
        lo = max(self.start or 0, other.start or 0)
        stops = [s for s in (self.stop, other.stop) if s is not None]
        return not stops or lo < min(stops)


def parse_ranges(texts: Sequence[str]) -> list[SequenceRange]:
    """:meth:`SequenceRange.parse` of each text."""
    return [SequenceRange.parse(t) for t in texts]
