"""Tests on the real KITTI samples cannot pass by skipping under CI."""

from __future__ import annotations

from pathlib import Path

import conftest
import pytest


def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "nowhere")
    monkeypatch.setenv("CI", "true")
    # BaseException: a skip must not escape as the test's own outcome.
    with pytest.raises(BaseException, match="under CI they are required") as raised:
        conftest.require_shared_data()
    assert raised.type is pytest.fail.Exception
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="real KITTI samples not found"):
        conftest.require_shared_data()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    assert conftest.require_shared_data() == tmp_path
