"""ONNX export of both towers, and localization on onnxruntime (no torch) with the same results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from map_world import map_world, query_image  # noqa: F401
from typer.testing import CliRunner

from liploc.cli import app
from liploc.errors import ConfigError, DataError, ModelMismatchError
from liploc.interop.camera_preprocess import CameraPreprocess
from liploc.localization.onnx_localizer import OnnxLocalizer
from liploc.runtime.inputs import build_transforms, camera_image_input
from liploc.runtime.run_folder import load_model_from_checkpoint
from liploc.serving.app import create_app
from liploc.serving.engine import MapService

REPO = Path(__file__).resolve().parents[1]


def test_a_built_map_localizes_without_torch_by_default(map_world) -> None:  # noqa: F811
    # `map build` keeps an ONNX export of the camera tower in the map, and `liploc localize`
    # (--backend auto) answers from it with torch unimportable: a cold start without torch and
    # timm, with the poses torch gives.
    assert (map_world["map"] / "model" / "onnx" / "preprocessing.json").is_file()
    images = [str(query_image(map_world["root"], f)) for f in (2, 17)]
    args = ["localize", str(map_world["map"]), *images, "--json", "-k", "5"]
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from liploc.cli import app\n"
        f"app({args!r}, standalone_mode=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    torch_out = _localize_json([str(map_world["map"]), *images, "--backend", "torch", "--device", "cpu"])
    for a, b in zip(json.loads(res.stdout), torch_out, strict=True):
        assert [m["frame"] for m in a["matches"]] == [m["frame"] for m in b["matches"]]
        np.testing.assert_allclose(
            [m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=1e-4
        )


def test_auto_backend_takes_onnx_only_where_it_gives_torchs_poses(tmp_path: Path) -> None:
    from liploc.localization.backend import choose_backend

    map_dir = tmp_path / "map"
    (map_dir / "model" / "onnx").mkdir(parents=True)
    (map_dir / "manifest.json").write_text(json.dumps({"embedding_precision": "fp32"}))
    assert choose_backend(map_dir, None, None, "auto", False) == "torch"  # no export yet
    (map_dir / "model" / "onnx" / "preprocessing.json").write_text("{}")
    assert choose_backend(map_dir, None, None, "auto", False) == "onnx"
    assert choose_backend(map_dir, None, None, "cpu", False) == "onnx"
    assert choose_backend(map_dir, None, None, "cuda", False) == "torch"
    assert choose_backend(map_dir, None, tmp_path / "other.safetensors", "auto", False) == "torch"
    assert choose_backend(map_dir, None, None, "auto", True) == "torch"  # --sequence
    # --onnx DIR is what the user asked for: onnx, or a refusal that says why (it was ignored).
    with pytest.raises(ConfigError, match="no ONNX export there"):
        choose_backend(map_dir, tmp_path / "elsewhere", None, "auto", False)
    assert choose_backend(map_dir, map_dir / "model" / "onnx", None, "auto", True) == "onnx"
    with pytest.raises(ConfigError, match="--checkpoint"):
        choose_backend(map_dir, map_dir / "model" / "onnx", tmp_path / "other.safetensors", "auto", False)
    # A map embedded in bf16 (built on a GPU): the fp32 export would not embed queries like it.
    (map_dir / "manifest.json").write_text(json.dumps({"embedding_precision": "bf16"}))
    assert choose_backend(map_dir, None, None, "auto", False) == "torch"
    # A map that did not record its precision: the model's train.precision decides, as it does
    # for torch's queries (auto and fp32 are fp32 on a CPU); no model file to tell: torch.
    (map_dir / "manifest.json").write_text(json.dumps({"embedding_precision": None}))
    assert choose_backend(map_dir, None, None, "auto", False) == "torch"
    for precision, backend in (("auto", "onnx"), ("fp32", "onnx"), ("bf16", "torch"), ("fp16", "torch")):
        config = {"train": {"precision": precision}}
        (map_dir / "model" / "model.json").write_text(json.dumps({"metadata": {"config": config}}))
        assert choose_backend(map_dir, None, None, "auto", False) == backend, precision


@pytest.fixture(scope="module")
def exported(map_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """A private copy of the map, its model exported into COPY/model/onnx by the CLI, and the other
    run's export. The session's map (and its own export) is shared with other test modules: left
    as it is."""
    runner = CliRunner()
    shared_before = _file_states(map_world["map"])
    private = tmp_path_factory.mktemp("onnx")
    map_dir = private / "map"
    shutil.copytree(map_world["map"], map_dir, symlinks=True)
    onnx_dir = map_dir / "model" / "onnx"
    res = runner.invoke(
        app,
        [
            "export",
            str(map_dir / "model" / "model.safetensors"),
            "--format",
            "onnx",
            "--out",
            str(onnx_dir),
            "--force",  # map build left the map's own export there
        ],
    )
    assert res.exit_code == 0, res.output
    assert "largest difference to torch" in res.output
    other = private / "other-onnx"
    res = runner.invoke(app, ["export", str(map_world["other_run"]), "--out", str(other)])
    assert res.exit_code == 0, res.output
    assert _file_states(map_world["map"]) == shared_before, "the session's map was changed"
    return {"map": map_dir, "map_export": onnx_dir, "other_export": other}


def _file_states(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime in ns, size) of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_export_writes_both_towers_that_match_torch_with_a_dynamic_batch(exported, map_world) -> None:  # noqa: F811
    import onnxruntime as ort

    folder = exported["map_export"]
    spec = json.loads((folder / "preprocessing.json").read_text())
    model, _ = load_model_from_checkpoint(map_world["run"])
    assert spec["model_fingerprint"] == model.fingerprint()
    assert spec["image"]["resize"]["size_hw"] == [32, 32] and spec["image"]["mean"] == [0.485, 0.456, 0.406]
    assert spec["lidar"]["input_shape"] == ["batch", 3, 32, 32] and spec["lidar"]["lidar_input"] == "range"
    rng = np.random.default_rng(1)
    for name, encode in (("image", model.encode_image), ("lidar", model.encode_lidar)):
        session = ort.InferenceSession(str(folder / spec[name]["file"]), providers=["CPUExecutionProvider"])
        for batch in (1, 4, 7):
            x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
            with torch.no_grad():
                expected = encode(torch.from_numpy(x)).numpy()
            got = session.run(None, {spec[name]["input_name"]: x})[0]
            assert got.shape == (batch, 64)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(40, 128), (17, 23), (300, 500), (32, 32)])
def test_numpy_camera_preprocessing_equals_torchs(exported, map_world, shape) -> None:  # noqa: F811
    _, config = load_model_from_checkpoint(map_world["run"])
    spec = json.loads((exported["map"] / "model" / "onnx" / "preprocessing.json").read_text())
    image = np.random.default_rng(shape[0]).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    expected = (
        build_transforms(config.data, train=False, model=config.model)
        .image(camera_image_input(image, config))
        .numpy()
    )
    got = CameraPreprocess.from_spec(spec["image"])(image)
    # Equal up to a rare rounding of a value at .5 to the other 8-bit level.
    assert np.mean(np.abs(got - expected) > 1e-5) < 0.01
    np.testing.assert_allclose(got, expected, atol=1 / 255 / 0.224 + 1e-5)


def _localize_json(args: list[str]) -> list[dict]:
    res = CliRunner().invoke(app, ["localize", *args, "--json", "-k", "5"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_localize_backend_onnx_gives_the_torch_results(exported, map_world) -> None:  # noqa: F811
    images = [str(query_image(map_world["root"], f)) for f in (0, 9, 21, 29)]
    torch_out = _localize_json([str(exported["map"]), *images, "--backend", "torch", "--device", "cpu"])
    onnx_out = _localize_json([str(exported["map"]), *images, "--backend", "onnx"])
    for a, b in zip(torch_out, onnx_out, strict=True):
        assert [m["frame"] for m in a["matches"]] == [m["frame"] for m in b["matches"]]
        np.testing.assert_allclose(
            [m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=1e-4
        )


def test_serve_backend_onnx_answers_like_torch(exported, map_world) -> None:  # noqa: F811
    data = query_image(map_world["root"], 13).read_bytes()
    answers = []
    for backend in ("torch", "onnx"):
        service = MapService.open(exported["map"], backend=backend, device="cpu")
        with TestClient(create_app(service)) as c:
            body = c.post("/localize?k=5", files={"image": data}).json()
        assert body["backend"] == backend
        assert body["model_fingerprint"] == service.lidar_map.model_fingerprint
        answers.append(body["matches"])
    assert [m["frame_id"] for m in answers[0]] == [m["frame_id"] for m in answers[1]]
    np.testing.assert_allclose([m["score"] for m in answers[0]], [m["score"] for m in answers[1]], atol=1e-4)


def test_serve_backend_onnx_localizes_sequences_like_torch(exported, map_world) -> None:  # noqa: F811
    files = [
        ("image", (f"{f}.png", query_image(map_world["root"], f).read_bytes())) for f in (20, 21, 22, 23)
    ]
    answers = []
    for backend in ("torch", "onnx"):
        service = MapService.open(exported["map"], backend=backend, device="cpu")
        with TestClient(create_app(service)) as c:
            res = c.post("/localize/sequence?k=3", files=files, data={"travelled": "1,1,1"})
        assert res.status_code == 200, res.text
        assert res.json()["backend"] == backend
        answers.append(res.json())
    torch_body, onnx_body = answers
    assert [m["frame_id"] for m in torch_body["matches"]] == [m["frame_id"] for m in onnx_body["matches"]]
    assert [p["frame_id"] for p in torch_body["path"]] == [p["frame_id"] for p in onnx_body["path"]]
    np.testing.assert_allclose(
        [m["score"] for m in torch_body["matches"]], [m["score"] for m in onnx_body["matches"]], atol=1e-3
    )
    np.testing.assert_allclose(
        [p["similarity"] for p in torch_body["path"]], [p["similarity"] for p in onnx_body["path"]], atol=1e-4
    )


def test_localize_sequence_on_the_onnx_backend_gives_torchs_path(exported, map_world) -> None:  # noqa: F811
    images = [str(query_image(map_world["root"], f)) for f in (20, 21, 22, 23)]
    runner = CliRunner()
    answers = {}
    for backend in ("torch", "onnx"):
        cmd = ["localize", str(exported["map"]), *images, "--sequence", "--travelled", "1,1,1"]
        res = runner.invoke(app, [*cmd, "--json", "-k", "3", "--backend", backend])
        assert res.exit_code == 0, res.output
        answers[backend] = json.loads(res.output)
    torch_body, onnx_body = answers["torch"], answers["onnx"]
    assert [(m["sequence"], m["frame"]) for m in onnx_body["matches"]] == [
        (m["sequence"], m["frame"]) for m in torch_body["matches"]
    ]
    assert [p.get("frame") for p in onnx_body["path"]] == [p.get("frame") for p in torch_body["path"]]
    np.testing.assert_allclose(
        [p["similarity"] for p in onnx_body["path"]], [p["similarity"] for p in torch_body["path"]], atol=1e-4
    )
    # Another model's checkpoint is torch's business: refused, not silently ignored.
    other = ["--checkpoint", str(map_world["other_run"])]
    res = runner.invoke(
        app, ["localize", str(exported["map"]), *images, "--sequence", "--backend", "onnx", *other]
    )
    assert res.exit_code == 1 and "--checkpoint is for the torch backend" in res.output


def test_localize_names_the_backend_that_answered(exported, map_world) -> None:  # noqa: F811
    # The backends agree within 1e-4, not bit for bit: the table says which one answered.
    image = str(query_image(map_world["root"], 5))
    runner = CliRunner()
    cmd = ["localize", str(exported["map"]), image, "-k", "1"]
    res = runner.invoke(app, [*cmd, "--backend", "onnx"])
    assert res.exit_code == 0, res.output
    assert "embedded by onnxruntime from" in res.output and "onnx" in res.output.split("from")[-1]
    res = runner.invoke(app, [*cmd, "--backend", "torch", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "embedded by torch on cpu" in res.output


def test_onnx_localization_runs_without_torch(exported, map_world) -> None:  # noqa: F811
    # torch installed and importable, but the ONNX path never imports it (nor timm): a torch-free
    # install would run the same code. (test_a_built_map_localizes_without_torch_by_default runs
    # with torch made unimportable.)
    script = (
        "import sys\n"
        "from liploc.localization.onnx_localizer import OnnxLocalizer\n"
        f"loc = OnnxLocalizer.open({str(exported['map'])!r})\n"
        f"m = loc.localize([{str(query_image(map_world['root'], 4))!r}], 3)[0]\n"
        "print(len(m), m[0].frame_id, 'torch' in sys.modules, 'timm' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    n, _, torch_imported, timm_imported = res.stdout.split()
    assert n == "3" and torch_imported == "False" and timm_imported == "False"


def test_an_export_of_another_model_or_a_changed_graph_is_refused(exported, map_world, tmp_path) -> None:  # noqa: F811
    with pytest.raises(ModelMismatchError, match="built with model"):
        OnnxLocalizer.open(exported["map"], exported["other_export"])
    with pytest.raises(DataError, match="liploc export"):
        OnnxLocalizer.open(exported["map"], tmp_path / "nowhere")
    copy = tmp_path / "tampered"
    copy.mkdir()
    for f in exported["map_export"].iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    graph = copy / "image_tower.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError, match="checksum"):
        OnnxLocalizer.open(exported["map"], copy)
    res = CliRunner().invoke(
        app, ["export", str(map_world["run"]), "--format", "tflite", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "tflite" in res.output  # a usage error, like other bad values
    res = CliRunner().invoke(app, ["localize", str(exported["map"]), "x.png", "--backend", "tpu"])
    # A usage error, refused by the command line's own check before anything loads.
    assert res.exit_code == 2 and "tpu" in res.output


def _export_copy(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in source.iterdir():
        dest.joinpath(f.name).write_bytes(f.read_bytes())
    return dest


def test_a_graph_swapped_for_another_models_is_refused_by_its_own_word(exported, tmp_path) -> None:
    # Fault found from outside: the other model's graph, with preprocessing.json's sha256 rewritten
    # to match, was used with the JSON's fingerprint (frame 55 where torch gives 53).
    from liploc.checksums import file_size_and_sha256
    from liploc.interop.onnx_encoder import OnnxImageEncoder

    forged = _export_copy(exported["map_export"], tmp_path / "forged")
    (forged / "image_tower.onnx").write_bytes((exported["other_export"] / "image_tower.onnx").read_bytes())
    spec = json.loads((forged / "preprocessing.json").read_text())
    spec["image"]["sha256"] = file_size_and_sha256(forged / "image_tower.onnx")[1]
    (forged / "preprocessing.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"image_tower\.onnx: the graph is of model"):
        OnnxImageEncoder(forged)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/image_tower.onnx", ".."])
def test_the_export_description_cannot_point_outside_its_folder(exported, tmp_path, name: str) -> None:
    from liploc.interop.onnx_encoder import OnnxImageEncoder

    bad = _export_copy(exported["map_export"], tmp_path / "bad")
    spec = json.loads((bad / "preprocessing.json").read_text())
    spec["image"]["file"] = name
    (bad / "preprocessing.json").write_text(json.dumps(spec))
    with pytest.raises(
        DataError, match=r"preprocessing\.json: names the graph .* not a file of the export folder"
    ):
        OnnxImageEncoder(bad)


def test_map_build_tries_the_export_again_after_cpythons_ast_race(map_world, tmp_path, monkeypatch) -> None:  # noqa: F811
    # CPython 3.11's AST constructor fails ("recursion depth mismatch", a SystemError) when another
    # thread parses code while torch.export does; the map's export is tried once more, not dropped.
    import liploc.interop.onnx_export as onnx_export
    from liploc.localization.localize import _export_camera_tower

    map_dir = tmp_path / "map"
    shutil.copytree(map_world["map"], map_dir)
    shutil.rmtree(map_dir / "model" / "onnx")
    real, calls = onnx_export.export_onnx, []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=48, after=47)")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", racing)
    _export_camera_tower(map_dir, console=None)
    assert len(calls) == 2 and (map_dir / "model" / "onnx" / "image_tower.onnx").is_file()


def test_the_parity_check_takes_a_bev_cell_edge_within_rounding_as_equal(monkeypatch) -> None:
    # A bridge's back-projected point within rounding of a BEV cell edge lands in either cell, in
    # torch as in onnxruntime (seen: 2.5e-4 apart, onnxruntime = torch for the rays x (1 + 1e-6)).
    # Such an export is not refused; one that differs from torch otherwise still is.
    import liploc.interop.onnx_export as onnx_export
    from liploc.config import load_config
    from liploc.models import create_model

    config = load_config(REPO / "configs" / "tiny_bridge.yaml")
    torch.manual_seed(0)
    graph = onnx_export.tower_graphs(create_model(config.model).eval(), config)["image"]
    rays, _ = onnx_export.example_camera_rays(config.model.bridge.depth_size)
    edge = float(rays[0, 0, 0]) * (1 + onnx_export.RAY_ROUNDING / 2)  # a cell edge between the two

    class EdgeTower(torch.nn.Module):
        """The camera tower with one raster cell whose content flips at that edge."""

        def __init__(self) -> None:
            super().__init__()
            self.inner, self.model = graph.tower, graph.tower.model

        def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**inputs) + 1e-2 * (inputs["rays"][:, 0, 0] > edge).float()

    edged = onnx_export.TowerGraph(EdgeTower(), graph.inputs)

    def session(offset: float, scale: float):
        class Session:  # onnxruntime as it would round: the rays scaled, the output moved
            def __init__(self, *args, **kwargs) -> None:
                pass

            def run(self, _names, inputs):
                feed = {**inputs, "rays": inputs["rays"] * np.float32(scale)}
                with torch.no_grad():
                    out = edged.tower(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
                return [out + offset]

        return Session

    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", session(0.0, 1 + onnx_export.RAY_ROUNDING))
    assert onnx_export._parity(edged, Path("unused.onnx"), 3) < 1e-6
    monkeypatch.setattr(onnxruntime, "InferenceSession", session(1e-3, 1.0))
    assert onnx_export._parity(edged, Path("unused.onnx"), 3) > onnx_export.PARITY_TOLERANCE
