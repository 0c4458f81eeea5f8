"""The command line as a user and a script meet it: bad arguments refused at once (before torch is
imported) without a traceback, exit codes, --version, help without Python type names, tables that fit
80 columns and plain lines in pipes, sequence names as typed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from liploc import __version__
from liploc.cli import app
from liploc.console import print_table, table_lines
from liploc.datasets.sequence_names import resolve_sequence_name
from liploc.errors import DataError
from liploc.evaluation.metrics import evaluate_retrieval, within_noise_of_chance
from liploc.localization.results import matches_table

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


def _leaf_commands() -> dict[str, object]:
    """Every command a user runs (``map build``, not ``map``), by its words, as click objects."""
    import typer.main

    found: dict[str, object] = {}

    def walk(command: Any, words: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):  # a group (typer's own click)
            for name, sub in command.commands.items():
                walk(sub, (*words, name))
        else:
            found[" ".join(words)] = command

    walk(typer.main.get_command(app), ())
    return found


def _examples_of(text: str) -> list[str]:
    """The example commands at the end of a help text, continuation lines joined."""
    body = text.split("Examples", 1)[1].splitlines()
    commands, current = [], ""
    for raw in body:
        line = raw.strip()
        current = f"{current} {line}".strip() if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current.startswith(("liploc ", "torchrun ", "curl ")):
            commands.append(current)
        current = ""
    return commands


def test_help_at_80_columns_cuts_nothing_and_its_examples_paste() -> None:
    leaves = _leaf_commands()
    assert {"serve", "export", "cache warm", "cache info", "cache clear", "import lip-loc"} <= set(leaves)
    for words, command in leaves.items():
        text = CliRunner().invoke(app, [*words.split(), "--help"], env={"COLUMNS": "80"}).output
        assert "…" not in text, f"{words}: something is cut\n{text}"
        assert max(len(line) for line in text.splitlines()) <= 80, words
        for param in command.params:  # every name whole, on one line
            for name in [*param.opts, *param.secondary_opts]:
                if name.startswith("-"):
                    assert re.search(rf"(^|[\s,/]){re.escape(name)}($|[\s,/])", text, re.M), (words, name)
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        placeholders = usage.split("[OPTIONS]", 1)[1].split()
        assert all(p.strip("[].") == p.strip("[].").upper() for p in placeholders), usage
        assert "{" not in usage, usage
        examples = _examples_of(text)
        assert examples, f"{words} has no examples"
        for example in examples:  # each option of a liploc example is an option of its command
            tokens = shlex.split(example.replace("torchrun --nproc_per_node=4 -m ", ""))
            if tokens[0] != "liploc":
                continue
            target = next(c for w, c in leaves.items() if tokens[1 : 1 + len(w.split())] == w.split())
            names = {n for p in target.params for n in [*p.opts, *p.secondary_opts]}
            unknown = [t for t in tokens if t.startswith("-") and t.split("=")[0] not in names]
            assert not unknown, f"{words}: example '{example}' has {unknown}"
    evaluate_help = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "80"}).output
    assert len(evaluate_help.splitlines()) <= 80  # was 115, descriptions 20 characters wide
    line = next(line for line in evaluate_help.splitlines() if "--sequence TEXT" in line)
    assert len(line) - 2 - line.index("Query sequence") >= 40, line  # the description column


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
        yaw_deg=-177.6,
    )
    console = Console(width=80, record=True, force_terminal=True)
    print_table(console, matches_table("/a/very/long/path/" * 5 + "image.png", [match] * 5))
    drawn = console.export_text()
    assert "2011_09_26_drive_0013_sync" in drawn and "…" not in drawn
    assert max(len(line) for line in drawn.splitlines()[1:]) <= 80
    assert "/a/very/long/path/" * 5 + "image.png" in drawn.replace("\n", "")  # title whole


def test_sequence_tables_keep_image_names_whole_and_look_like_the_single_image_table() -> None:
    from liploc.localization.results import LocalizedSequence

    def match(frame: int, score: float) -> SimpleNamespace:
        return SimpleNamespace(
            rank=1, score=score, sequence="02", frame_index=frame, xy=(1.5 * frame, -2.0), yaw_deg=90.0
        )

    folder = "/data/kitti/dataset/sequences/02/image_2/"
    images = [f"{folder}{i:06d}.png" for i in range(12, 18)]
    path = [match(i, 0.5) for i in range(12, 17)] + [None]
    result = LocalizedSequence(images, [match(17, 2.5), match(16, 2.1)], path, [1.0] * 5)
    console = Console(width=80, record=True, force_terminal=True)
    for table in result.tables():
        print_table(console, table)
    drawn = console.export_text()
    assert "…" not in drawn and "│" not in drawn and "┃" not in drawn, drawn  # no box, nothing cut
    assert all(f"{i:06d}.png" in drawn for i in range(12, 18))
    assert max(len(line) for line in drawn.splitlines() if folder.rstrip("/") not in line) <= 80
    assert folder.rstrip("/") in drawn.replace("\n", "")  # the folder, once, whole
    plain = [line for table in result.tables() for line in table_lines(table)]
    assert any(line.split()[:2] == ["000017.png", "off"] for line in plain), plain


def test_info_keeps_the_world_frame_line_whole_at_80_columns() -> None:
    from liploc.commands.info import DatasetSummary, SequenceSummary, _print_summary

    frame = "Mercator (one scale and origin for the root)"
    names = ["2011_09_26_drive_0001_sync", "2011_09_26_drive_0002_sync"]
    summary = DatasetSummary(
        Path("/data/raw"), "kitti_raw", [SequenceSummary(n, world_frame=frame) for n in names]
    )
    console = Console(width=80, record=True, force_terminal=True)
    _print_summary(summary, "KITTI raw", console)
    line = f"world frame: {frame} - {', '.join(names)}"
    assert line in console.export_text().splitlines(), console.export_text()  # one line, not broken


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


def test_chance_marker_survives_the_sequence_table() -> None:
    """--seq-len prints single and sequence rows in one table: a single-image R@1 within noise of
    chance keeps its ~ and the caption that says what it means (it showed a plain figure)."""
    from liploc.evaluation.sequence_rows import single_and_sequence_table

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    xy = np.stack([np.arange(200.0) * 5, np.zeros(200)], axis=1)
    single = evaluate_retrieval(emb, emb[rng.permutation(200)], xy, xy, thresholds_m=[5.0])
    info = {"sequence_matching": {"seq_len": 5, "odometry": False, "window_m": 20.0}}
    sequence = evaluate_retrieval(emb, emb, xy, xy, thresholds_m=[5.0], info=info)
    assert single.main.near_chance and not sequence.main.near_chance
    lines = table_lines(single_and_sequence_table(single, sequence, title="00"))
    single_row = next(line for line in lines if " single " in f" {line} ")
    sequence_row = next(line for line in lines if "seq L=5" in line)
    assert f"~{100 * single.main.recall[1]:.1f}%" in single_row
    assert "~" not in sequence_row
    assert any("no evidence of skill" in line for line in lines)
    assert any("sequence window: 5 images" in line for line in lines)  # the caption it had


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


@pytest.fixture()
def workspace(tmp_path: Path) -> SimpleNamespace:
    """A dataset (sequences 03 and 04), run folders, a map folder and output folders to refuse."""
    import fcntl

    from conftest import write_kitti_odometry

    data = tmp_path / "data"
    write_kitti_odometry(data, "03", 3)
    write_kitti_odometry(data, "04", 3)

    def run_folder(name: str, protocol: str) -> str:
        """A run folder whose checkpoint manifest says how it evaluates (no weights: nothing loads)."""
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        config = {"eval": {"protocol": protocol}}
        manifest = {"format": "liploc-checkpoint", "version": 1, "metadata": {"config": config}}
        (tmp_path / name / "checkpoints" / "best.json").write_text(json.dumps(manifest))
        return str(tmp_path / name)

    run, cross = run_folder("run", "same-sequence"), run_folder("cross-run", "cross-drive")
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    trained = tmp_path / "trained"  # holds a training run
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "checkpoints" / "last.json").write_text("{}")
    (trained / "checkpoints" / "best.json").write_text("{}")
    busy = tmp_path / "busy"  # another process writes it
    busy.mkdir()
    lock = open(busy / ".lock", "w")  # noqa: SIM115 (held until the test ends)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("pid 4242 on host elsewhere\n")
    lock.flush()
    full = tmp_path / "full"  # an output folder with something in it
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    export = tmp_path / "export"
    export.mkdir()
    (export / "preprocessing.json").write_text("{}")
    map_dir = tmp_path / "map"
    map_dir.mkdir()
    (map_dir / "manifest.json").write_text("{}")
    frames = []
    for i in range(2):
        frames.append(tmp_path / f"f{i}.png")
        Image.new("RGB", (1241, 376)).save(frames[-1])
    return SimpleNamespace(
        root=tmp_path,
        data=str(data),
        run=run,
        cross=cross,
        empty_run=str(empty_run),
        trained=str(trained),
        busy=str(busy),
        full=str(full),
        export=str(export),
        map=str(map_dir),
        frames=[str(f) for f in frames],
        lock=lock,
    )


def test_refusals_that_read_files_come_before_torch(workspace: SimpleNamespace) -> None:
    w = workspace
    ev = ["evaluate", w.run, "--data-root", w.data]
    cross = [*ev, "--protocol", "cross-drive"]
    tiny = str(REPO / "configs" / "tiny.yaml")
    build = ["map", "build", w.run, "--data-root", w.data]
    cases = {
        "map drive is the query drive": (
            [*cross, "--sequence", "3", "--map-sequence", "3"],
            1,
            "query drive",
        ),
        "the same drive typed two ways": (
            [*cross, "--sequence", "3", "--map-sequence", "03"],
            1,
            "query drive",
        ),
        "cross-drive without a map": ([*cross, "--sequence", "3"], 1, "needs --map-sequence"),
        "the run's cross-drive without a map": (
            ["evaluate", w.cross, "--data-root", w.data, "--sequence", "3"],
            1,
            "needs --map-sequence",
        ),
        "unknown sequence": ([*ev, "--sequence", "7"], 1, "no sequence '7'"),
        "--exclude-self across drives": (
            [*cross, "--sequence", "3", "--map-sequence", "4", "--exclude-self"],
            1,
            "--exclude-self is for same-sequence",
        ),
        "a preset with a protocol": ([*ev, "--preset", "kitti-b", "--protocol", "revisit"], 1, "fixed by"),
        "a run without checkpoint": (
            ["evaluate", w.empty_run, "--data-root", w.data, "--sequence", "3"],
            1,
            "no checkpoints/best",
        ),
        "unknown map sequence": ([*cross, "--sequence", "3", "--map-sequence", "9"], 1, "no sequence '9'"),
        "unknown --set key": (["train", tiny, "--set", "train.bach_size=3"], 1, "did you mean"),
        "invalid --set value": (["train", tiny, "--set", "train.batch_size=abc"], 1, "valid integer"),
        "--set without a value": (["train", tiny, "--set", "train"], 1, "expected key=value"),
        "cache warm --set": (["cache", "warm", tiny, "--set", "nope=1"], 1, "unknown key 'nope'"),
        "run folder holds a run": (["train", tiny, "--out", w.trained], 1, "pass --resume"),
        "nothing to resume": (["train", tiny, "--out", w.full, "--resume"], 1, "cannot resume"),
        "run folder locked": (["train", tiny, "--out", w.busy], 1, "another process is writing"),
        "map output exists": ([*build, "--sequence", "3", "--out", w.full], 1, "pass --force"),
        "map of an unknown sequence": ([*build, "--sequence", "7", "--out", f"{w.root}/m"], 1, "no sequence"),
        "import over a run": (["import", "lip-loc", w.run, "--out", w.trained], 1, "already exists"),
        "import of nothing": (
            ["import", "lip-loc", f"{w.root}/no.pth", "--out", f"{w.root}/r"],
            2,
            "does not",
        ),
        "export format": (["export", w.run, "--out", f"{w.root}/e", "--format", "tflite"], 2, "onnx"),
        "export over an export": (["export", w.run, "--out", w.export], 1, "pass --force"),
        "export over other files": (["export", w.run, "--out", w.full, "--force"], 1, "not a liploc ONNX"),
        "--onnx without an export": (["localize", w.map, w.frames[0], "--onnx", w.full], 1, "no ONNX export"),
        "serve --onnx without an export": (["serve", w.map, "--onnx", w.full], 1, "no ONNX export"),
        "wrong --travelled count": (
            ["localize", w.map, *w.frames, "--sequence", "--travelled", "1,2"],
            1,
            "2 images need 1",
        ),
    }
    wrong = []
    for (name, (_args, code, says)), got in zip(
        cases.items(), _probe([c[0] for c in cases.values()]), strict=True
    ):
        text = " ".join(got["output"].replace("│", " ").split())
        if got["exit_code"] != code or says not in text or "Traceback" in text or got["heavy"]:
            wrong.append(f"{name}: exit {got['exit_code']}, imported {got['heavy']}: {text[:300]}")
    assert not wrong, "\n".join(wrong)
    assert (Path(w.full) / "notes.txt").read_text() == "keep me"  # nothing replaced or removed
    assert not (w.root / "m").exists()
