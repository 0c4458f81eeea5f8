"""``liploc serve``: the HTTP localization service and map page (the work: :mod:`liploc.serving`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from liploc.commands._common import console, reported_errors
from liploc.commands.options import MapArgument, OnnxDir, check_device, examples
from liploc.errors import ConfigError

if TYPE_CHECKING:
    from liploc.serving.settings import ServeSettings

EPILOG = examples(
    "liploc serve maps/08",
    "liploc serve maps/08 --data-root /data/kitti/dataset --host 0.0.0.0 --port 8080",
    "curl -F image=@query.png 'http://127.0.0.1:8000/localize?k=5'",
    notes="The map page is at http://127.0.0.1:8000/, the API's documentation at /docs.",
)

Host = Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: every interface).")]
Port = Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)]
Device = Annotated[
    str, typer.Option(help="auto, cpu, cuda or cuda:N (torch backend).", callback=check_device)
]
BackendOption = Annotated[
    Literal["auto", "torch", "onnx"],
    typer.Option(
        metavar="BACKEND",
        help="auto (as localize's: onnxruntime on the map's ONNX export on the CPU, ready in a "
        "fraction of the time, torch where the export could answer otherwise), torch or onnx.",
    ),
]
Checkpoint = Annotated[Path | None, typer.Option(help="Embed queries with this model (must be the map's).")]
DataRoot = Annotated[
    Path | None, typer.Option("--data-root", help="The map's dataset, for range images on the page.")
]
Layout = Annotated[str, typer.Option(help="Dataset layout of --data-root, or auto.")]
MaxUploadMb = Annotated[float, typer.Option(help="Largest request body in MiB.")]
MaxBatch = Annotated[int, typer.Option(help="Most images per forward pass.")]
MaxWaitMs = Annotated[float, typer.Option(help="Longest wait to fill a batch.")]
Threads = Annotated[
    int | None,
    typer.Option(help="CPU threads of the network's forward pass (default: half the cores).", min=1),
]
DecodeThreads = Annotated[
    int | None, typer.Option(help="Threads decoding uploads (default: the cores, at most 8).", min=1)
]
MaxK = Annotated[int, typer.Option(help="Largest k a request may ask for.")]
MaxImagesPerRequest = Annotated[int, typer.Option(help="Most images per /localize/batch.")]
MaxRequestMegapixels = Annotated[
    float,
    typer.Option(help="Most pixels of one request's images together, in millions, from their headers."),
]
MaxSequenceImages = Annotated[int, typer.Option(help="Most images per /localize/sequence (its window).")]


def serve(
    map_dir: MapArgument,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    device: Device = "auto",
    backend: BackendOption = "auto",
    onnx_dir: OnnxDir = None,
    checkpoint: Checkpoint = None,
    data_root: DataRoot = None,
    layout: Layout = "auto",
    max_upload_mb: MaxUploadMb = 20.0,
    max_batch: MaxBatch = 16,
    max_wait_ms: MaxWaitMs = 10.0,
    threads: Threads = None,
    decode_threads: DecodeThreads = None,
    max_k: MaxK = 100,
    max_images_per_request: MaxImagesPerRequest = 32,
    max_sequence_images: MaxSequenceImages = 64,
    max_request_megapixels: MaxRequestMegapixels = 100.0,
) -> None:
    """HTTP localization service and map page: POST /localize, /localize/batch, /localize/sequence;
    GET /, /map, /docs. POST /reload or SIGHUP serves the map folder as it is now (after map add)."""
    from liploc.localization.backend import choose_backend

    with reported_errors():
        if backend == "auto":
            backend = choose_backend(map_dir, onnx_dir, checkpoint, device)
        from liploc.serving.engine import MapService
        from liploc.serving.server import serve as run_server

        settings = _settings(
            host=host,
            port=port,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_k=max_k,
            max_images_per_request=max_images_per_request,
            max_sequence_images=max_sequence_images,
            max_request_pixels=int(max_request_megapixels * 1e6),
            network_threads=threads,
            decode_threads=decode_threads,
        )
        service = MapService.open(
            map_dir,
            backend=backend,
            device=device,
            checkpoint=checkpoint,
            onnx_dir=onnx_dir,
            data_root=data_root,
            layout=layout,
            threads=settings.network_threads,
        )
        run_server(service, settings, console)


def _settings(**values: Any) -> ServeSettings:
    """The service's settings from the options (None: the setting's default); a ConfigError names
    the first invalid one."""
    from pydantic import ValidationError

    from liploc.serving.settings import ServeSettings

    try:
        return ServeSettings(**{name: value for name, value in values.items() if value is not None})
    except ValidationError as err:
        problem = err.errors()[0]
        raise ConfigError(f"serve settings: {problem['loc'][0]}: {problem['msg']}") from None
