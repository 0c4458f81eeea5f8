"""The command line as a user and a script meet it: bad arguments refused at once (before torch is
imported) without a traceback, exit codes, --version, help without Python type names, tables that fit
80 columns and plain lines in pipes, sequence names as typed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from liploc import __version__
from liploc.cli import app, matches_table
from liploc.console import print_table, table_lines
from liploc.datasets.sequence_names import resolve_sequence_name
from liploc.errors import DataError
from liploc.evaluation.metrics import evaluate_retrieval, within_noise_of_chance

REPO = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "timm", "faiss", "onnxruntime", "safetensors", "cv2", "liploc.models", "liploc.training")
"""What a refusal must not have imported: the model, index and training code and their libraries."""

# Runs every invocation in ONE fresh interpreter (so that no other test has imported torch yet) and
# reports, for each, the exit code, the output and which of HEAVY had been imported when it returned:
# a refusal that comes before those imports (happens-before, not a wall-clock bound) is "at once".
_PROBE = """
import json, sys
from typer.testing import CliRunner
from liploc.cli import app
HEAVY = json.loads(sys.argv[2])
report = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    report.append({
        "args": args,
        "exit_code": result.exit_code,
        "output": result.output,
        "heavy": sorted(m for m in HEAVY if m in sys.modules),
    })
print(json.dumps(report))
"""


def _probe(invocations: list[list[str]]) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(invocations), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture()
def files(tmp_path: Path) -> SimpleNamespace:
    map_dir = tmp_path / "map"
    map_dir.mkdir()
    (map_dir / "manifest.json").write_text("{}")
    not_a_map = tmp_path / "plain"
    not_a_map.mkdir()
    tiny, portrait, grey16 = tmp_path / "tiny.png", tmp_path / "portrait.png", tmp_path / "grey16.png"
    Image.new("RGB", (8, 8)).save(tiny)
    Image.new("RGB", (376, 1241)).save(portrait)
    Image.fromarray(np.full((376, 1241), 40000, dtype=np.uint16)).save(grey16)
    return SimpleNamespace(
        root=tmp_path, map=str(map_dir), plain=str(not_a_map), tiny=tiny, portrait=portrait, grey16=grey16
    )


def test_bad_arguments_are_refused_at_once_without_heavy_imports(files: SimpleNamespace) -> None:
    root = str(files.root)
    ev = ["evaluate", root, "--data-root", root, "--sequence", "00"]
    cases = {
        "-k 0": (["localize", files.map, "x.png", "-k", "0"], 2, "greater than or equal to 1"),
        "missing map": (["localize", f"{root}/nope", "x.png"], 2, "does not exist"),
        "folder not a map": (["localize", files.plain, "x.png"], 2, "not a map folder"),
        "missing image": (["localize", files.map, f"{root}/none.png"], 1, "image file not found"),
        "empty glob": (["localize", files.map, f"{root}/*.jpg"], 1, "matches no file"),
        "8x8 image": (["localize", files.map, str(files.tiny)], 1, "too small"),
        "portrait": (["localize", files.map, str(files.portrait)], 1, "portrait image"),
        "16-bit grey": (["localize", files.map, str(files.grey16)], 1, "16-bit"),
        "unknown protocol": ([*ev, "--protocol", "cross"], 2, "cross-drive"),
        "negative threshold": ([*ev, "--threshold", "-5"], 2, "above 0"),
        "zero threshold": ([*ev, "--threshold", "0"], 2, "above 0"),
        "bad device": ([*ev, "--device", "gpu"], 2, "cuda:N"),
        "bad layout": ([*ev, "--layout", "kiti"], 2, "kitti_raw"),
        "missing run": (["evaluate", f"{root}/nope", "--data-root", root, "--sequence", "0"], 2, "does not"),
        "synth size": (["synth", "--out", f"{root}/s", "--size", "huge"], 2, "small"),
        "synth pairs": (["synth", "--out", f"{root}/s", "--pairs", "both"], 2, "reverse"),
        "synth drives": (["synth", "--out", f"{root}/s", "--drives", "0"], 2, "greater than or equal to 1"),
        "info missing": (["info", f"{root}/nope"], 2, "does not exist"),
    }
    for (name, (_args, code, says)), got in zip(
        cases.items(), _probe([c[0] for c in cases.values()]), strict=True
    ):
        text = " ".join(got["output"].replace("│", " ").split())
        assert got["exit_code"] == code, f"{name}: {got['output']}"
        assert says in text, f"{name}: {text}"
        assert "Traceback" not in got["output"], name
        assert got["heavy"] == [], f"{name} imported {got['heavy']} before refusing"


def test_version_and_help_read_well() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"liploc {__version__}"
    for command in (["evaluate"], ["localize"], ["synth"], ["info"], ["map", "build"], ["train"], ["demo"]):
        text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"}).output
        assert "<bool>" not in text and "list[" not in text and "<str>" not in text, command
        assert "Examples" in text, command
    evaluate_help = " ".join(CliRunner().invoke(app, ["evaluate", "--help"]).output.replace("│", " ").split())
    assert "20 and 10 m" in evaluate_help and "30 s" in evaluate_help  # the real defaults
    assert "same-sequence" in evaluate_help and "revisit" in evaluate_help
    synth_help = CliRunner().invoke(app, ["synth", "--help"]).output
    assert "kitti|small" in synth_help and "same-direction" in synth_help


def test_metrics_table_fits_80_columns_and_pipes() -> None:
    rng = np.random.default_rng(0)
    n = 1200
    db_xy = np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    result = evaluate_retrieval(emb, emb, db_xy, db_xy, thresholds_m=[20.0, 10.0, 5.0])
    console = Console(width=80, record=True, force_terminal=True)
    print_table(
        console, result.table(title="2011_09_26_drive_0013_sync-same-sequence (1200 queries, 1200 scans)")
    )
    drawn = console.export_text()
    assert max(len(line) for line in drawn.splitlines()) <= 80
    assert "…" not in drawn and "1200/1200" in drawn and "R@1%" in drawn
    lines = table_lines(result.table())
    assert lines[1].split()[:3] == ["within", "queries", "R@1"]
    assert all("│" not in line and "─" not in line for line in lines)
    assert lines[2].split()[:2] == ["20", "m"]


def test_localize_table_keeps_raw_drive_names_whole() -> None:
    match = SimpleNamespace(
        rank=1,
        score=0.8731,
        sequence="2011_09_26_drive_0013_sync",
        frame_index=1234,
        xy=(-1234.5, 4321.0),
        yaw=-3.1,
    )
    console = Console(width=80, record=True, force_terminal=True)
    print_table(console, matches_table("/a/very/long/path/" * 5 + "image.png", [match] * 5))
    drawn = console.export_text()
    assert "2011_09_26_drive_0013_sync" in drawn and "…" not in drawn
    assert max(len(line) for line in drawn.splitlines()[1:]) <= 80
    assert "/a/very/long/path/" * 5 + "image.png" in drawn.replace("\n", "")  # title whole


def test_recall_within_noise_of_chance_is_flagged() -> None:
    assert within_noise_of_chance(0.02, 0.005, 120)  # 2 hits more than chance: noise
    assert not within_noise_of_chance(0.40, 0.005, 120)
    assert within_noise_of_chance(0.75, 0.35, 4)  # 3 of 4 against 35% chance: no evidence
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    xy = np.stack([np.arange(200.0) * 5, np.zeros(200)], axis=1)
    random_result = evaluate_retrieval(emb, emb[rng.permutation(200)], xy, xy, thresholds_m=[5.0])
    assert random_result.main.near_chance
    assert "within noise of chance" in "\n".join(table_lines(random_result.table()))
    assert random_result.to_dict()["thresholds"][0]["recall_at_1_near_chance"] is True
    perfect = evaluate_retrieval(emb, emb, xy, xy, thresholds_m=[5.0])
    assert not perfect.main.near_chance
    assert "chance" not in (perfect.table().caption or "")


@pytest.mark.parametrize(
    ("typed", "known", "expected"),
    [
        ("8", ["00", "08", "10"], "08"),
        ("08", ["00", "08", "10"], "08"),
        ("13", ["2011_09_26_drive_0013_sync", "2011_09_26_drive_0014_sync"], "2011_09_26_drive_0013_sync"),
        ("0013", ["2011_09_26_drive_0013_sync"], "2011_09_26_drive_0013_sync"),
        ("2", ["2013_05_28_drive_0002_sync"], "2013_05_28_drive_0002_sync"),
        ("10", ["1", "10"], "10"),  # an exact name wins
    ],
)
def test_sequence_names_as_users_type_them(typed: str, known: list[str], expected: str) -> None:
    assert resolve_sequence_name(typed, known) == expected


def test_ambiguous_or_unknown_sequence_names_list_the_candidates() -> None:
    drives = ["2011_09_26_drive_0013_sync", "2011_09_29_drive_0013_sync"]
    with pytest.raises(DataError, match="ambiguous: it matches 2011_09_26_drive_0013_sync, 2011_09_29"):
        resolve_sequence_name("13", drives)
    with pytest.raises(DataError, match=r"no sequence '7' \(found: 00, 08\)"):
        resolve_sequence_name("7", ["00", "08"])


def test_info_exits_non_zero_when_it_finds_no_sequence(tmp_path: Path) -> None:
    (tmp_path / "sequences").mkdir()
    result = CliRunner().invoke(app, ["info", str(tmp_path), "--layout", "kitti"])
    assert result.exit_code == 1, result.output
    assert "no sequences found" in result.output and "Traceback" not in result.output
