"""Tests on the real KITTI samples (and other prerequisites) cannot pass by skipping under CI: one
rule for "under CI" (``conftest.under_ci``), one helper that skips or fails (``skip_unless_ci``)."""

from __future__ import annotations

import re
from pathlib import Path

import conftest
import pytest

TESTS = Path(__file__).resolve().parent


def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "nowhere")
    monkeypatch.setenv("CI", "true")
    # BaseException: a skip must not escape as the test's own outcome.
    with pytest.raises(BaseException, match="under CI it is required") as raised:
        conftest.require_shared_data()
    assert raised.type is pytest.fail.Exception
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="real KITTI samples not found"):
        conftest.require_shared_data()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    assert conftest.require_shared_data() == tmp_path


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        *[(v, True) for v in ("1", "true", "TRUE", "True", "yes", "Yes")],
        *[(v, False) for v in ("", "0", "false", "no", None)],
    ],
)
def test_ci_is_any_true_value(value: str | None, ci: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert conftest.under_ci() is ci
    with pytest.raises(BaseException, match="a prerequisite") as raised:
        conftest.skip_unless_ci("a prerequisite")
    assert raised.type is (pytest.fail.Exception if ci else pytest.skip.Exception)


def test_every_skip_and_ci_check_of_the_suite_goes_through_the_helper() -> None:
    # A plain pytest.skip (or a CI check of its own) would let CI pass by skipping a real-data test.
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ("conftest.py", Path(__file__).name):
            continue
        text = path.read_text()
        for pattern in (r"pytest\.skip\(", r"importorskip\(", r"""environ[^\n]*["']CI["']"""):
            offenders += [f"{path.relative_to(TESTS)}: {pattern}" for _ in re.finditer(pattern, text)]
    assert offenders == [], "use conftest.skip_unless_ci / under_ci"
