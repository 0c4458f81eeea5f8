"""Run the app with uvicorn: bind (localhost unless told), say where, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

from rich.console import Console

from liploc.serving.app import create_app
from liploc.serving.engine import MapService
from liploc.serving.settings import ServeSettings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve(service: MapService, settings: ServeSettings, console: Console, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; uvicorn finishes requests in flight, then the batcher stops."""
    import uvicorn

    app = create_app(service, settings)
    m = service.lidar_map
    console.print(
        f"map [bold]{service.name}[/]: {len(m)} scans, model {m.model_fingerprint[:12]}, "
        f"backend {service.encoder.backend} on {service.encoder.device}"
    )
    where = f"http://{settings.host}:{settings.port}"
    if settings.host in LOCAL_HOSTS:
        console.print(f"listening on {where} (localhost only; --host 0.0.0.0 to accept other machines)")
    else:
        console.print(f"[yellow]listening on {where}: reachable from other machines[/]")
    console.print(f"map page {where}/   API docs {where}/docs   stop with Ctrl+C")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    # uvicorn installs its SIGINT/SIGTERM handlers: stop accepting, finish requests, run the lifespan end.
    uvicorn.Server(config).run()
    console.print("stopped")
