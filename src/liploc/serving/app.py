"""The HTTP API and the map page: a FastAPI app over a :class:`MapService`.

Endpoints (OpenAPI docs at ``/docs`` and ``/redoc``, their scripts served from the package
fastapi-offline: no CDN, so they work offline)::

    GET  /                                  the map page (static HTML + script, no build step)
    GET  /favicon.ico                       the page's icon (an SVG)
    GET  /health                            liveness, the map, backend and batching counters
    GET  /map                               the map's metadata: frames, extent, model, created
    GET  /map/trajectory                    every entry's x, y, yaw and frame id (for drawing)
    GET  /map/frames/{sequence}/{frame}     one entry's pose
    GET  /map/frames/{sequence}/{frame}/range.png   its scan's range image (needs --data-root)
    POST /localize?k=5                      one PNG/JPEG (multipart field ``image`` or raw body)
    POST /localize/batch?k=5                several images (multipart, one field ``images`` each)
    POST /localize/sequence?k=5             consecutive images (multipart ``image`` fields in
                                            driving order, optional ``travelled`` metres):
                                            the last one's poses by sequence matching, and the path
    POST /reload                            load the map folder again (after ``liploc map add``)
                                            and swap it in; requests in flight finish on the old
                                            map (:mod:`liploc.serving.live`); SIGHUP does the same

Every error is a JSON object ``{"error": code, "detail": what is wrong}`` with a 4xx status for a
bad request (a form field of another name, too many images or pixels, an image that is not one);
an unexpected failure is a 500 with the same shape and no traceback (it goes to the server's log).
Answers say ``k``, the poses returned per image (at most the map's frames), and ``k_requested``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from liploc.errors import ConfigError, DataError
from liploc.localization.lidar_map import Match
from liploc.localization.map_folder import place_json
from liploc.localization.results import LocalizedImage, LocalizedSequence
from liploc.serving.batching import MicroBatcher
from liploc.serving.engine import MapService, UnknownFrame
from liploc.serving.images import BadRequest, DecodedQuery, check_request_pixels, decode_query, read_header
from liploc.serving.live import LiveService, ReloadFailed
from liploc.serving.settings import ServeSettings

log = logging.getLogger("liploc.serve")
STATIC = files("liploc.serving") / "static"
RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")


def error_body(code: str, detail: str) -> dict[str, str]:
    """The JSON of every error response."""
    return {"error": code, "detail": detail}


class UploadTooLarge(Exception):
    """The request body grew past ``max_upload_bytes`` while it was read."""


class UploadLimit:
    """ASGI middleware: 413 for a body over the limit, by its Content-Length or while it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse(
                error_body("upload_too_large", _too_large(int(length), self.max_bytes)), status_code=413
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(_too_large(received, self.max_bytes))
            return message

        await self.app(scope, limited, send)


def _too_large(size: int, limit: int) -> str:
    return f"the upload is {size} bytes or more; the limit is {limit} bytes (--max-upload-mb)"


def create_app(service: MapService, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``service`` with ``settings``' limits and batching."""
    settings = settings or ServeSettings()
    batcher = MicroBatcher(
        service.localize_prepared,
        settings.max_batch,
        settings.max_wait_ms / 1000.0,
        thread_init=service.encoder.init_thread,
    )
    live = LiveService(service)
    decoder = QueryDecoder(service.encoder.init_thread, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown()

    app = FastAPI(
        title="liploc",
        summary="Global visual localization of camera images in a LiDAR map (LIP-Loc).",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI and ReDoc from a CDN: _add_docs serves them
        redoc_url=None,
    )
    app.state.live = live
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    _add_error_handlers(app)
    _add_page(app)
    _add_docs(app)
    _add_map_routes(app, live, settings, batcher)
    _add_localize_routes(app, live, settings, batcher, decoder)
    _add_reload_route(app, live)
    return app


class QueryDecoder:
    """Decodes uploads (and resizes them for the network) in its own threads, in parallel with
    each other and with the batch on the device; the event loop only moves bytes.

    Every request's images are first read from their headers: their sizes are checked, and their
    pixels together bounded (``max_request_pixels``, 413), before any pixel is decoded.
    """

    def __init__(self, thread_init: Callable[[], None], settings: ServeSettings) -> None:
        """``thread_init``: run once in each decode thread (the encoder's ``init_thread``)."""
        self.settings = settings
        self.threads = ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="liploc-decode", initializer=thread_init
        )

    async def __call__(self, service: MapService, uploads: list[tuple[str, bytes]]) -> list[DecodedQuery]:
        """The uploads decoded, checked and prepared as ``service``'s network inputs, in parallel."""
        self._check_headers(uploads)
        loop = asyncio.get_running_loop()
        prepare = service.encoder.prepare
        jobs = [
            loop.run_in_executor(self.threads, decode_query, data, self.settings, name, prepare)
            for name, data in uploads
        ]
        return list(await asyncio.gather(*jobs))

    async def one_at_a_time(
        self, service: MapService, uploads: list[tuple[str, bytes]]
    ) -> list[DecodedQuery]:
        """The uploads decoded one after the other, each shrunk at once to the RGB image the
        network sees (:meth:`MapService.sequence_input`): a sequence of many large images never
        holds more than one of them decoded."""
        self._check_headers(uploads)
        loop = asyncio.get_running_loop()
        shrink = service.sequence_input
        return [
            await loop.run_in_executor(self.threads, decode_query, data, self.settings, name, shrink)
            for name, data in uploads
        ]

    def _check_headers(self, uploads: list[tuple[str, bytes]]) -> None:
        check_request_pixels(
            [read_header(data, self.settings, name) for name, data in uploads], self.settings
        )

    def shutdown(self) -> None:
        self.threads.shutdown(wait=True)


def _add_error_handlers(app: FastAPI) -> None:
    """Errors are always JSON (:func:`error_body`), never a traceback."""

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(err.code, err.detail), status_code=err.status)

    @app.exception_handler(UploadTooLarge)
    async def _too_large_handler(_: Request, err: UploadTooLarge) -> JSONResponse:
        return JSONResponse(error_body("upload_too_large", str(err)), status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return JSONResponse(error_body(code, str(err.detail)), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in err.errors()
        ]
        return JSONResponse(error_body("invalid_parameter", "; ".join(problems)), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", f"{type(err).__name__}: the server failed; its log has the details"),
            status_code=500,
        )


def _add_page(app: FastAPI) -> None:
    """The map page: static HTML and script, no build step."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        # Browsers ask for it on every page; an SVG is as welcome as an .ico.
        icon = (STATIC / "favicon.svg").read_bytes()
        return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


DOCS_ASSETS = "/docs-assets"


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served from the package
    fastapi-offline ships them in, so that the documentation works on a machine without internet."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

    assets = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi = app.openapi_url or "/openapi.json"
    oauth2 = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} - API documentation",
            oauth2_redirect_url=oauth2,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
        )

    if oauth2:

        @app.get(oauth2, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} - API documentation",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url="/favicon.ico",
            with_google_fonts=False,
        )


def _add_map_routes(app: FastAPI, live: LiveService, settings: ServeSettings, batcher: MicroBatcher) -> None:
    """/health and the map: its metadata, trajectory, entries and their range images (of the map
    loaded now)."""
    started = time.time()

    @app.get("/health", summary="Liveness, the map, the backend and the batching counters")
    async def health() -> dict[str, Any]:
        service = live.current.service
        return {
            "status": "ok",
            "map": service.name,
            "frames": len(service.lidar_map),
            "model_fingerprint": service.encoder.fingerprint,
            "backend": service.encoder.backend,
            "uptime_s": round(time.time() - started, 3),
            "batching": {
                "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                **batcher.stats.as_dict(),
            },
            "map_loads": live.health(),
        }

    @app.get("/map", summary="The map's metadata: frames, extent, model, created")
    async def map_metadata() -> dict[str, Any]:
        return {**live.current.metadata, "limits": settings.model_dump(exclude={"host", "port"})}

    @app.get(
        "/map/trajectory",
        summary="Position, heading and frame id of every map entry",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}},
    )
    async def map_trajectory() -> Response:
        loaded = live.current
        body = await run_in_threadpool(lambda: loaded.trajectory_json)  # encoded once per map
        return Response(body, media_type="application/json")

    @app.get("/map/frames/{sequence}/{frame}", summary="One map entry's pose")
    async def map_frame(sequence: str, frame: int) -> dict[str, Any]:
        try:
            entry = live.current.service.frame_info(sequence, frame)
        except UnknownFrame as err:
            raise BadRequest(404, "unknown_frame", str(err)) from None
        return place_json(entry)

    @app.get(
        "/map/frames/{sequence}/{frame}/range.png",
        summary="The range image of a map entry's scan (the crop the model sees)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def map_frame_range(sequence: str, frame: int) -> Response:
        try:
            png = await run_in_threadpool(live.current.service.range_image_png, sequence, frame)
        except UnknownFrame as err:
            raise BadRequest(404, "unknown_frame", str(err)) from None
        except DataError as err:
            raise BadRequest(404, "range_images_unavailable", str(err)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def _add_reload_route(app: FastAPI, live: LiveService) -> None:
    """POST /reload: the map folder loaded again and swapped in (SIGHUP does the same)."""

    @app.post(
        "/reload",
        summary="Load the map folder again (after `liploc map add`) and serve it from now on",
        description="Requests in flight finish on the previous map; those that start after the swap "
        "get the new one. Answers the new map's frames and the previous count, its sequences, index "
        "kind, model fingerprint, generation (reloads so far) and the load time. If the map does not "
        "load, the previous map stays served and the answer is a 409 saying why.",
    )
    async def reload() -> Response:
        try:
            return JSONResponse(await live.reload())
        except ReloadFailed as err:
            return JSONResponse(error_body("reload_failed", err.detail), status_code=409)


def _add_localize_routes(
    app: FastAPI, live: LiveService, settings: ServeSettings, batcher: MicroBatcher, decode: QueryDecoder
) -> None:
    """POST /localize, /localize/batch and /localize/sequence: the JSON of ``liploc localize
    --json`` (:mod:`liploc.localization.results`), each image described by name and size, with
    the map, model and backend that answered and the time taken. Each request takes the map
    loaded when it starts (:attr:`LiveService.current`) and keeps it to its answer."""

    def identity(service: MapService) -> dict[str, Any]:
        return {
            "map": service.name,
            "frames": len(service.lidar_map),
            "model_fingerprint": service.encoder.fingerprint,
            "backend": service.encoder.backend,
        }

    def _k_json(service: MapService, k: int) -> dict[str, int]:
        # A map of 60 frames answers 60 poses to k=100: say so, rather than "k": 100.
        return {"k": min(k, len(service.lidar_map)), "k_requested": k}

    async def localized(
        request: Request, k: int | None, many: bool
    ) -> tuple[MapService, int, list[DecodedQuery], list[list[Match]], dict[str, float]]:
        """Read, decode and localize the images of a ``/localize`` or ``/localize/batch`` request
        on the map the request started on (a reload swaps maps between requests, never inside
        one): that map's service, k, the decoded queries, their matches and the request's times."""
        t0 = time.perf_counter()
        service = live.current.service
        with batcher.announce():
            uploads = await _read_uploads(request, settings, many=many)
            queries = await decode(service, uploads)
        t1 = time.perf_counter()
        kk = k or settings.default_k
        results = await batcher.submit([q.input for q in queries], kk, service.localize_prepared)
        return service, kk, queries, results, _times(t0, t1, time.perf_counter())

    k_query = Query(
        None, ge=1, le=settings.max_k, description=f"Poses to return (default {settings.default_k})."
    )

    @app.post(
        "/localize",
        summary="Top-k map poses of one camera image (PNG or JPEG)",
        openapi_extra=_image_body(many=False),
    )
    async def localize(request: Request, k: int | None = k_query) -> Response:
        service, kk, (query,), (matches,), times = await localized(request, k, many=False)
        # A Response, not a dict: FastAPI's encoder would walk every number of the 4 x 4 poses.
        return JSONResponse(
            {
                **identity(service),
                **_k_json(service, kk),
                **LocalizedImage(query.name, matches).to_json(),
                "image": _image_json(query),
                "time_ms": times,
            }
        )

    @app.post(
        "/localize/batch",
        summary="Top-k map poses of several camera images",
        openapi_extra=_image_body(many=True),
    )
    async def localize_batch(request: Request, k: int | None = k_query) -> Response:
        service, kk, queries, results, times = await localized(request, k, many=True)
        answers = [
            {**LocalizedImage(q.name, matches).to_json(), "image": _image_json(q)}
            for q, matches in zip(queries, results, strict=True)
        ]
        return JSONResponse(
            {**identity(service), **_k_json(service, kk), "results": answers, "time_ms": times}
        )

    @app.post(
        "/localize/sequence",
        summary="Pose of the last of several consecutive camera images, by sequence matching",
        description=SEQUENCE_DESCRIPTION,
        openapi_extra=_sequence_body(),
    )
    async def localize_sequence(request: Request, k: int | None = k_query) -> Response:
        t0 = time.perf_counter()
        service = live.current.service
        uploads, travelled = await _read_sequence_form(request, settings)
        queries = await decode.one_at_a_time(service, uploads)
        t1 = time.perf_counter()
        kk = k or settings.default_k
        try:
            found = await batcher.run_alone(
                service.localize_sequence, [q.input for q in queries], kk, travelled
            )
        except ConfigError as err:  # the Localizer's own checks of the window
            raise BadRequest(422, "invalid_sequence", str(err)) from None
        t2 = time.perf_counter()
        names = [q.name for q in queries]
        result = LocalizedSequence(names, found.matches, found.path, travelled).to_json()
        images = {"image": _image_json(queries[-1]), "images": [_image_json(q) for q in queries]}
        return JSONResponse(
            {**identity(service), **_k_json(service, kk), **result, **images, "time_ms": _times(t0, t1, t2)}
        )


SEQUENCE_DESCRIPTION = (
    "Several images in driving order (multipart, one file field `image` per image, oldest "
    "first) and, optionally, the metres travelled between consecutive images (text field "
    "`travelled`: comma-separated, one value fewer than images; the semantics of "
    "`liploc localize --sequence --travelled`). Returns the last image's top-k poses "
    "(the /localize shape; `score` is the path's mean normalised similarity, z-score "
    "units) and the best path: each image's map place with its cosine similarity."
)


def _image_json(query: DecodedQuery) -> dict[str, Any]:
    return {"name": query.name, "width": query.width, "height": query.height}


def _times(t0: float, t1: float, t2: float) -> dict[str, float]:
    return {
        "decode": round((t1 - t0) * 1000, 3),
        "localize": round((t2 - t1) * 1000, 3),
        "total": round((t2 - t0) * 1000, 3),
    }


IMAGE_FIELD = "image"
"""The file field of /localize and, one per image, of /localize/sequence."""
BATCH_FIELD = "images"
"""The file field of /localize/batch, one per image."""
TRAVELLED_FIELD = "travelled"


async def _read_uploads(request: Request, settings: ServeSettings, *, many: bool) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: multipart file fields, or the raw body."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    endpoint = "/localize/batch" if many else "/localize"
    if media == "multipart/form-data":
        if many:
            limit, field = settings.max_images_per_request, BATCH_FIELD
            too_many = BadRequest(
                413,
                "too_many_images",
                f"more than {limit} images in one request; the limit is {limit} (--max-images-per-request)",
            )
        else:
            limit, field = 1, IMAGE_FIELD
            too_many = BadRequest(
                400, "too_many_images", "/localize takes one image; use /localize/batch for several"
            )
        uploads, _ = await _read_form(request, endpoint, field, limit, too_many)
        if not uploads:
            raise BadRequest(
                400, "no_image", f"the form has no file field; send the image as file field '{field}'"
            )
        return uploads
    if media in RAW_IMAGE_TYPES or media == "":
        if many:
            raise BadRequest(
                415,
                "multipart_required",
                "/localize/batch takes multipart/form-data, one file field 'images' per image",
            )
        return [("body", await request.body())]
    raise BadRequest(
        415,
        "unsupported_content_type",
        f"Content-Type {media} is not accepted; send multipart/form-data with file field 'image', "
        "or the PNG/JPEG bytes as the body with Content-Type image/png or image/jpeg",
    )


async def _read_form(
    request: Request,
    endpoint: str,
    file_field: str,
    limit: int,
    too_many: BadRequest,
    text_fields: tuple[str, ...] = (),
) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """The files of ``file_field`` as (name, bytes), in order, and the values of ``text_fields``.

    ``too_many`` is raised as soon as the form holds more than ``limit`` files (starlette stops
    reading there); any other field is refused with a 400 that names it and the right one.
    """
    try:
        form = await request.form(max_files=limit, max_fields=limit + 8)
    except (StarletteHTTPException, MultiPartException) as err:
        detail = str(getattr(err, "detail", None) or getattr(err, "message", err))
        if "number of files" in detail:  # starlette's "Too many files. Maximum number of files is N."
            raise too_many from None
        raise BadRequest(400, "bad_multipart", f"the multipart form cannot be read: {detail}") from None
    takes = f"{endpoint} takes file fields '{file_field}'" + "".join(
        f" and the text field '{name}'" for name in text_fields
    )
    uploads: list[tuple[str, bytes]] = []
    texts: dict[str, list[str]] = {name: [] for name in text_fields}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile) and key == file_field:
                uploads.append((value.filename or key, await value.read()))
            elif isinstance(value, str) and key in texts:
                texts[key].append(value)
            elif key == file_field:
                raise BadRequest(
                    400,
                    "not_a_file",
                    f"form field '{key}' holds text, not a file: send the image itself as a file, "
                    f"e.g. curl -F {key}=@query.png",
                )
            else:
                kind = "file field" if isinstance(value, UploadFile) else "form field"
                raise BadRequest(400, "unknown_field", f"unknown {kind} '{key}'; {takes}")
    finally:
        await form.close()
    return uploads, texts


async def _read_sequence_form(
    request: Request, settings: ServeSettings
) -> tuple[list[tuple[str, bytes]], list[float] | None]:
    """The images (in order) and travelled distances of a /localize/sequence form, checked."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise BadRequest(
            415,
            "multipart_required",
            "/localize/sequence takes multipart/form-data: one file field 'image' per image, in "
            f"driving order, and optionally a text field '{TRAVELLED_FIELD}'",
        )
    limit = settings.max_sequence_images
    too_many = BadRequest(
        413,
        "too_many_images",
        f"more than {limit} images in one sequence; the limit is {limit} (--max-sequence-images)",
    )
    files, texts = await _read_form(
        request, "/localize/sequence", IMAGE_FIELD, limit, too_many, (TRAVELLED_FIELD,)
    )
    uploads = [(f"image {n} ({name})", data) for n, (name, data) in enumerate(files, 1)]
    if not uploads:
        raise BadRequest(400, "no_image", "the form has no image; send each image as file field 'image'")
    if not texts[TRAVELLED_FIELD]:
        return uploads, None
    travelled = _parse_travelled(",".join(texts[TRAVELLED_FIELD]))
    if len(travelled) != len(uploads) - 1:
        raise BadRequest(
            422,
            "wrong_number_of_distances",
            f"{len(uploads)} images need {len(uploads) - 1} travelled distances (one between each "
            f"pair of consecutive images), got {len(travelled)}",
        )
    return uploads, travelled


def _parse_travelled(text: str) -> list[float]:
    """Comma-separated metres -> floats; 422 naming the value that is not a finite distance >= 0."""
    values = []
    for i, part in enumerate((p.strip() for p in text.split(",") if p.strip()), 1):
        try:
            value = float(part)
        except ValueError:
            raise BadRequest(
                422,
                "invalid_distance",
                f"{TRAVELLED_FIELD}: value {i} '{part[:40]}' is not a number (metres)",
            ) from None
        if not math.isfinite(value) or value < 0:
            raise BadRequest(
                422,
                "invalid_distance",
                f"{TRAVELLED_FIELD}: value {i} is {part[:40]}; distances must be finite and >= 0 metres",
            )
        values.append(value)
    return values


def _sequence_body() -> dict[str, Any]:
    """OpenAPI description of the /localize/sequence form."""
    binary = {"type": "string", "format": "binary"}
    fields = {
        "image": {"type": "array", "items": binary, "description": "The images, oldest first."},
        TRAVELLED_FIELD: {
            "type": "string",
            "description": "Metres travelled between consecutive images, comma-separated "
            "(one value fewer than images); leave out when unknown.",
            "example": "1.0,1.1,0.9",
        },
    }
    schema = {"type": "object", "properties": fields, "required": ["image"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _image_body(*, many: bool) -> dict[str, Any]:
    """OpenAPI description of the image upload (the handler reads the body itself)."""
    binary = {"type": "string", "format": "binary"}
    field = {"images": {"type": "array", "items": binary}} if many else {"image": binary}
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "properties": field, "required": list(field)}}
    }
    if not many:
        content["image/png"] = {"schema": binary}
        content["image/jpeg"] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}
