"""A full disk during liploc synth is one error line naming what could not be written."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liploc.cli import app


def test_a_full_disk_during_synth_is_an_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_bytes = Path.write_bytes

    def no_space_for_images(self: Path, data: bytes) -> int:
        # The synth writer encodes PNGs itself (OpenCV) and writes their bytes to IMAGE.png.part.
        if ".png" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", no_space_for_images)
    args = ["synth", "--out", str(tmp_path / "town"), "--drives", "1", "--frames", "2", "--size", "small"]
    res = CliRunner().invoke(app, [*args, "--blocks", "2x2", "--workers", "1"])
    assert res.exit_code == 1 and res.exc_info[0] is SystemExit, res.output
    assert "error:" in res.output and "could not write" in res.output and ".png" in res.output
