"""Run the app with uvicorn: bind (localhost unless told), say where, stop cleanly on SIGINT/SIGTERM,
reload the map on SIGHUP (as ``POST /reload`` does)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Callable, Iterator

import uvicorn
from rich.console import Console

from liploc.serving.app import create_app
from liploc.serving.engine import MapService
from liploc.serving.live import LiveService, ReloadFailed
from liploc.serving.settings import ServeSettings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve(service: MapService, settings: ServeSettings, console: Console, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; uvicorn finishes requests in flight, then the batcher stops.
    SIGHUP reloads the map folder (``kill -HUP PID`` after ``liploc map add``) and says how it went."""
    if service.encoder.backend == "torch":
        import torch

        # The process is the server's: its forward pass gets the threads the settings give it.
        torch.set_num_threads(settings.network_threads)
    app = create_app(service, settings)
    # Everything loaded so far (torch, the model, the app) lives as long as the process: keep it
    # out of the garbage collector's full passes, which otherwise walk it all and stall every
    # request in flight for a fifth of a second now and then (the p99 of serve_load.py).
    gc.collect()
    gc.freeze()
    m = service.lidar_map
    console.print(
        f"map [bold]{service.name}[/]: {len(m)} scans, model {m.model_fingerprint[:12]}, "
        f"backend {service.encoder.backend} on {service.encoder.device}, "
        f"{settings.network_threads} network thread(s), {settings.decode_threads} decode thread(s)"
    )
    where = f"http://{settings.host}:{settings.port}"
    if settings.host in LOCAL_HOSTS:
        console.print(f"listening on {where} (localhost only; --host 0.0.0.0 to accept other machines)")
    else:
        console.print(f"[yellow]listening on {where}: reachable from other machines[/]")
    console.print(f"map page {where}/   API docs {where}/docs   stop with Ctrl+C   reload the map: SIGHUP")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    server.on_hangup = lambda: _reload(app.state.live, console)
    server.run()
    names = ", ".join(signal.Signals(s).name for s in server.stop_signals) or "no signal"
    console.print(f"stopped ({names}): requests in flight were answered")


async def _reload(live: LiveService, console: Console) -> None:
    """Reload the map (SIGHUP) and say what happened; a failure leaves the old map served."""
    try:
        done = await live.reload()
    except ReloadFailed as err:
        console.print(f"[red]reload failed:[/] {err.detail}")
        return
    console.print(
        f"reloaded map [bold]{done['map']}[/]: {done['frames']} scans (was {done['previous_frames']}), "
        f"loaded in {done['load_s']} s"
    )


class _Server(uvicorn.Server):
    """uvicorn's server, but a stop signal ends in a normal return (exit status 0), and SIGHUP runs
    ``on_hangup`` on the event loop.

    uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, which kills the process by the
    signal before the CLI can say it stopped; here the handlers only ask it to shut down.
    """

    stop_signals: list[int]
    on_hangup: Callable[[], object] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        self.stop_signals = []
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: object) -> None:
            self.stop_signals.append(sig)
            self.handle_exit(sig, None)

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.on_hangup is not None:
            loop = asyncio.get_running_loop()
            hangup = self.on_hangup
            tasks: set[asyncio.Future[object]] = set()

            def reload(sig: int, frame: object) -> None:
                # The handler runs between two bytecodes of the loop's thread: only schedule.
                def start() -> None:
                    task = asyncio.ensure_future(hangup())  # type: ignore[arg-type]
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

                loop.call_soon_threadsafe(start)

            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
