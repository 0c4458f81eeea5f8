"""The HTTP API and the map page: a FastAPI app over a :class:`MapService`.

Endpoints (OpenAPI docs at ``/docs``)::

    GET  /                                  the map page (static HTML + script, no build step)
    GET  /health                            liveness, the map, backend and batching counters
    GET  /map                               the map's metadata: frames, extent, model, created
    GET  /map/trajectory                    every entry's x, y, yaw and frame id (for drawing)
    GET  /map/frames/{sequence}/{frame}     one entry's pose
    GET  /map/frames/{sequence}/{frame}/range.png   its scan's range image (needs --data-root)
    POST /localize?k=5                      one PNG/JPEG (multipart field ``image`` or raw body)
    POST /localize/batch?k=5                several images (multipart, one field per image)

Every error is a JSON object ``{"error": code, "detail": what is wrong}`` with a 4xx status for a
bad request; an unexpected failure is a 500 with the same shape and no traceback (it goes to the
server's log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from liploc.errors import DataError
from liploc.retrieval.lidar_map import Match
from liploc.serving.batching import MicroBatcher
from liploc.serving.engine import MapService, UnknownFrame
from liploc.serving.images import BadRequest, decode_image
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


def match_json(m: Match) -> dict[str, Any]:
    """One retrieved map entry as JSON: frame id, score, x, y, yaw and the full 4 x 4 pose."""
    return {
        "rank": m.rank,
        "score": round(float(m.score), 6),
        "frame_id": m.frame_id,
        "sequence": m.sequence,
        "frame": m.frame_index,
        "timestamp_s": m.timestamp,
        "x": float(m.pose[0, 3]),
        "y": float(m.pose[1, 3]),
        "z": float(m.pose[2, 3]),
        "yaw_rad": m.yaw,
        "yaw_deg": m.yaw * 57.29577951308232,
        "pose": m.pose.tolist(),
    }


def create_app(service: MapService, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``service`` with ``settings``' limits and batching."""
    settings = settings or ServeSettings()
    batcher = MicroBatcher(service.localize, settings.max_batch, settings.max_wait_ms / 1000.0)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="liploc",
        summary="Global visual localization of camera images in a LiDAR map (LIP-Loc).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)

    # --- errors: always JSON, never a traceback -----------------------------------------------------
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

    # --- the page -----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # --- the map ------------------------------------------------------------------------------------
    @app.get("/health", summary="Liveness, the map, the backend and the batching counters")
    async def health() -> dict[str, Any]:
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
        }

    metadata = service.metadata()
    trajectory = service.trajectory()

    @app.get("/map", summary="The map's metadata: frames, extent, model, created")
    async def map_metadata() -> dict[str, Any]:
        return {**metadata, "limits": settings.model_dump(exclude={"host", "port"})}

    @app.get("/map/trajectory", summary="Position, heading and frame id of every map entry")
    async def map_trajectory() -> dict[str, Any]:
        return trajectory

    @app.get("/map/frames/{sequence}/{frame}", summary="One map entry's pose")
    async def map_frame(sequence: str, frame: int) -> dict[str, Any]:
        try:
            entry = service.frame_info(sequence, frame)
        except UnknownFrame as err:
            raise BadRequest(404, "unknown_frame", str(err)) from None
        return {k: v for k, v in match_json(entry).items() if k not in ("rank", "score")}

    @app.get(
        "/map/frames/{sequence}/{frame}/range.png",
        summary="The range image of a map entry's scan (the crop the model sees)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def map_frame_range(sequence: str, frame: int) -> Response:
        try:
            png = await run_in_threadpool(service.range_image_png, sequence, frame)
        except UnknownFrame as err:
            raise BadRequest(404, "unknown_frame", str(err)) from None
        except DataError as err:
            raise BadRequest(404, "range_images_unavailable", str(err)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    # --- localization -------------------------------------------------------------------------------
    k_query = Query(
        None, ge=1, le=settings.max_k, description=f"Poses to return (default {settings.default_k})."
    )

    @app.post(
        "/localize",
        summary="Top-k map poses of one camera image (PNG or JPEG)",
        openapi_extra=_image_body(many=False),
    )
    async def localize(request: Request, k: int | None = k_query) -> dict[str, Any]:
        t0 = time.perf_counter()
        with batcher.announce():
            uploads = await _read_uploads(request, settings, many=False)
            name, data = uploads[0]
            image = await run_in_threadpool(decode_image, data, settings, name)
        t1 = time.perf_counter()
        kk = k or settings.default_k
        matches = (await batcher.submit([image], kk))[0]
        t2 = time.perf_counter()
        return {
            **_identity(service),
            "k": kk,
            "image": {"name": name, "width": int(image.shape[1]), "height": int(image.shape[0])},
            "matches": [match_json(m) for m in matches],
            "time_ms": _times(t0, t1, t2),
        }

    @app.post(
        "/localize/batch",
        summary="Top-k map poses of several camera images",
        openapi_extra=_image_body(many=True),
    )
    async def localize_batch(request: Request, k: int | None = k_query) -> dict[str, Any]:
        t0 = time.perf_counter()
        with batcher.announce():
            uploads = await _read_uploads(request, settings, many=True)
            images = [await run_in_threadpool(decode_image, data, settings, name) for name, data in uploads]
        t1 = time.perf_counter()
        kk = k or settings.default_k
        results = await batcher.submit(images, kk)
        t2 = time.perf_counter()
        return {
            **_identity(service),
            "k": kk,
            "results": [
                {
                    "image": {"name": name, "width": int(img.shape[1]), "height": int(img.shape[0])},
                    "matches": [match_json(m) for m in matches],
                }
                for (name, _), img, matches in zip(uploads, images, results, strict=True)
            ],
            "time_ms": _times(t0, t1, t2),
        }

    return app


def _identity(service: MapService) -> dict[str, Any]:
    return {
        "map": service.name,
        "model_fingerprint": service.encoder.fingerprint,
        "backend": service.encoder.backend,
    }


def _times(t0: float, t1: float, t2: float) -> dict[str, float]:
    return {
        "decode": round((t1 - t0) * 1000, 3),
        "localize": round((t2 - t1) * 1000, 3),
        "total": round((t2 - t0) * 1000, 3),
    }


async def _read_uploads(request: Request, settings: ServeSettings, *, many: bool) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: multipart file fields, or the raw body."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        limit = settings.max_images_per_request if many else 1
        form = await request.form(max_files=limit + 1, max_fields=limit + 8)
        uploads = [
            (v.filename or key, await v.read()) for key, v in form.multi_items() if isinstance(v, UploadFile)
        ]
        await form.close()
        if not uploads:
            field = "images" if many else "image"
            raise BadRequest(
                400, "no_image", f"the form has no file field; send the image as file field '{field}'"
            )
        if len(uploads) > limit:
            detail = (
                f"{len(uploads)} images in one request; the limit is {limit} (--max-images-per-request)"
                if many
                else f"/localize takes one image, got {len(uploads)}; use /localize/batch for several"
            )
            raise BadRequest(400 if not many else 413, "too_many_images", detail)
        return uploads
    if media in RAW_IMAGE_TYPES or media == "":
        if many:
            raise BadRequest(
                415,
                "multipart_required",
                "/localize/batch takes multipart/form-data, one file field per image",
            )
        return [("body", await request.body())]
    raise BadRequest(
        415,
        "unsupported_content_type",
        f"Content-Type {media} is not accepted; send multipart/form-data with file field 'image', "
        "or the PNG/JPEG bytes as the body with Content-Type image/png or image/jpeg",
    )


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
