"""The service's settings: where it listens, its request limits and its batching."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class ServeSettings(BaseModel):
    """Limits and batching of ``liploc serve`` (each is a command-line option)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Interface to bind; localhost unless told otherwise (0.0.0.0 exposes the service)."""
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    """Largest request body; a bigger upload gets 413 before it is read whole."""
    min_image_side: int = Field(16, ge=1)
    """Smallest accepted image width or height in pixels."""
    max_image_pixels: int = Field(50_000_000, gt=0)
    """Largest accepted width x height (a decompression bomb is refused before decoding)."""
    max_request_pixels: int = Field(100_000_000, gt=0)
    """Largest sum of width x height over one request's images, read from their headers before
    any is decoded: 16 images of 7000 x 7000 pixels fit in a 2.3 MB body and would take 2.3 GB
    decoded. 100 Mpx is 200 KITTI frames, or eight 12 Mpx photos."""
    default_k: int = Field(5, ge=1)
    max_k: int = Field(100, ge=1)
    max_images_per_request: int = Field(32, ge=1)
    """Most images one ``/localize/batch`` request may carry."""
    max_sequence_images: int = Field(64, ge=1)
    """Most images one ``/localize/sequence`` request may carry (its window)."""
    max_batch: int = Field(16, ge=1)
    """Most images embedded in one forward pass when requests are batched together."""
    decode_threads: int = Field(default_factory=lambda: min(8, usable_cores()), ge=1)
    """Threads decoding uploads (and resizing them for the network) in parallel; default: the
    machine's cores, at most 8."""
    network_threads: int = Field(default_factory=lambda: max(1, usable_cores() // 2), ge=1)
    """CPU threads of the network's forward pass (torch's or onnxruntime's intra-op threads);
    default: half the cores, leaving the rest to decoding and HTTP. On 2 cores one thread: a
    second one spins beside the decoders and costs more CPU than it saves."""
    max_wait_ms: float = Field(10.0, ge=0.0, le=1000.0)
    """Longest wait of a batch for requests still uploading/decoding (a lone request never waits).
    Long enough for a batch's uploads to decode in parallel: on 2 cores, 3 ms cut batches of 8
    clients to 4 images and 10 ms let them fill (serve_load.py)."""
