"""The HTTP service: ``POST /v1/score``, ``GET /v1/health``, ``GET /v1/version``, the page at ``/``.

One :class:`~detector.bundle.ProvenanceDetector` is loaded once and shared. A score request is
authorised and rate limited, its body read under a byte cap, its files type-checked, pixel-checked and
decoded on a bounded thread pool, then queued for the micro-batcher, whose worker threads run the model;
the event loop only waits. Requests beyond ``max_queue`` images in flight get 503 at once rather than
piling up. Every error is JSON: ``{"error": code, "detail": message}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from detector import __version__
from detector.service.auth import KeyStore, RateLimiter
from detector.service.batching import MicroBatcher
from detector.service.config import ServiceConfig
from detector.service.probes import ProbeGuard
from detector.service.uploads import ServiceError, Upload, check_type, decode_upload, parse_files, read_body

LOG = logging.getLogger("detector.service")
STATIC = Path(__file__).resolve().parent / "static"
#: The page loads nothing from anywhere else; thumbnails are local blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            }
        },
    }
}


def branch_probabilities(detector, result) -> dict[str, float]:
    """P(AI) from each passive branch alone (the fusion's single-branch model): what the page draws as one
    bar per branch. Empty without a fitted fusion."""
    fusion = getattr(detector, "fusion", None)
    if fusion is None or not result.ok:
        return {}
    out = {}
    for name, value in sorted(result.branches.items()):
        if value is not None and name in fusion.branches:
            out[name] = float(fusion.predict_one({name: value}))
    return out


def _discard_upload(future) -> None:
    """Done-callback for a decode whose request is gone: its temporary file must not linger."""
    if not future.cancelled() and future.exception() is None:
        future.result().remove()


class Service:
    """The state one app holds: detector, batcher, decode pool, keys, rate limiter, temp folder."""

    def __init__(self, detector, config: ServiceConfig, keys: KeyStore):
        self.detector = detector
        self.config = config
        self.keys = keys
        self.limiter = RateLimiter()
        self.probes: ProbeGuard | None = None
        if config.probe_memory and detector.pipeline.watermark is not None:  # we answer `watermarked`
            self.probes = ProbeGuard(config.probe_memory, config.probe_similarity, config.forged_per_day)
            if config.probe_state:
                self.probes.attach(config.probe_state)
        self.batcher = MicroBatcher(
            detector.pipeline.score_batch,
            max_batch=config.batch_size,
            max_wait_s=config.batch_wait_ms / 1000.0,
            workers=config.score_workers,
        )
        self.decode_pool: ThreadPoolExecutor | None = None
        self.temp_dir: str | None = None
        self.in_flight = 0  # images admitted and not yet answered (touched on the event loop only)

    def start(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="detector-serve-")  # 0700: private to this process' user
        self.decode_pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="decode")
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()
        if self.probes is not None and self.probes.state_path is not None:
            self.probes.save()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=True, cancel_futures=True)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    # ------------------------------------------------------------------ auth
    def authorize(self, request) -> str:
        """The caller's identity for rate limiting; 401 / 429 as :class:`ServiceError`."""
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        name = self.keys.identify(key) if self.keys else None
        challenge = {"WWW-Authenticate": 'Bearer realm="detector"'}
        if self.keys and key and name is None:
            raise ServiceError(401, "unauthorized", "unknown API key", headers=challenge)
        if self.keys and name is None and self.config.page == "keyed":
            raise ServiceError(
                401,
                "unauthorized",
                "an API key is required (X-API-Key or Authorization: Bearer)",
                headers=challenge,
            )
        host = request.client.host if request.client else "unknown"
        caller, limit = (
            (f"key:{name}", self.config.rate_limit)
            if name
            else (f"addr:{host}", self.config.anonymous_rate_limit)
        )
        if limit > 0:
            wait = self.limiter.allow(caller, limit)
            if wait > 0:
                raise ServiceError(
                    429,
                    "rate_limited",
                    f"rate limit of {limit:g} requests/minute reached; retry in {wait:.1f} s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return caller

    # ------------------------------------------------------------------ scoring
    async def score(self, request) -> dict[str, Any]:
        caller = self.authorize(request)
        config = self.config
        try:  # a client that trickles its body does not hold a connection forever
            body = await asyncio.wait_for(read_body(request, config.max_request_bytes), config.timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(
                408, "request_timeout", f"request body not received within {config.timeout_s:g} s"
            ) from None
        files = await parse_files(request, body, config.max_files)
        del body
        for name, data in files:  # cheap, before any decoding
            check_type(name, data)
        if self.in_flight + len(files) > config.max_queue:
            raise ServiceError(
                503,
                "saturated",
                f"{self.in_flight} images are in flight (limit {config.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += len(files)
        uploads: list[Upload] = []
        try:
            return await asyncio.wait_for(self._score_files(files, uploads, caller), config.timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(504, "timeout", f"not scored within {config.timeout_s:g} s") from None
        finally:
            self.in_flight -= len(files)
            for upload in uploads:
                upload.remove()

    async def _score_files(
        self, files: list[tuple[str, bytes]], uploads: list[Upload], caller: str
    ) -> dict[str, Any]:
        futures = [
            self.decode_pool.submit(decode_upload, name, data, self.config.max_pixels, self.temp_dir)
            for name, data in files
        ]
        try:
            decoded = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        except asyncio.CancelledError:  # timed out while decoding: remove what still gets decoded
            for future in futures:
                future.add_done_callback(_discard_upload)
            raise
        errors = []
        for item in decoded:
            if isinstance(item, Upload):
                uploads.append(item)
            elif isinstance(item, ServiceError):
                errors.append(item)
            else:
                raise item
        if errors:  # all or nothing: the response names every refused file and why
            first = errors[0]
            raise ServiceError(
                first.status,
                first.code,
                "; ".join(e.detail for e in errors),
                files=[f for e in errors for f in e.files],
            )
        futures = self.batcher.submit([(u.temp_path, u.image) for u in uploads])
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()  # not scored yet: the batcher drops it
            raise
        if self.probes is not None:  # fingerprints off the event loop; only marked images need one
            loop = asyncio.get_running_loop()
            results = [
                await loop.run_in_executor(self.decode_pool, self._guarded, r, u.image, caller)
                if self.probes.concerns(r.watermark)
                else r
                for r, u in zip(results, uploads, strict=True)
            ]
        results = [replace(r, path=u.name) for r, u in zip(results, uploads, strict=True)]
        return {
            "results": [r.to_dict() for r in results],
            "branch_p_ai": [branch_probabilities(self.detector, r) for r in results],
        }

    def _guarded(self, result, image, caller: str):
        """The result as the probe guard lets it stand (fused again when it contests the mark)."""
        evidence = self.probes.review(np.asarray(image), result.watermark, caller)
        if evidence is result.watermark:
            return result
        return self.detector.pipeline.with_watermark(result, evidence)

    # ------------------------------------------------------------------ info
    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.in_flight < self.config.max_queue else "saturated",
            "in_flight": self.in_flight,
            "max_queue": self.config.max_queue,
            "queued_for_model": self.batcher.pending,
            "batches": self.batcher.batches,
            "images": self.batcher.images,
            "largest_batch": self.batcher.largest_batch,
            "probe_guard": None if self.probes is None else {"remembered": len(self.probes)},
        }

    def version(self) -> dict[str, Any]:
        fusion = self.detector.fusion_config
        try:
            import c2pa

            c2pa_version = c2pa.sdk_version()
        except (ImportError, AttributeError):
            c2pa_version = None
        return {
            "detector": __version__,
            "bundle": self.detector.describe(),
            "fusion": {"threshold": fusion.threshold, "uncertain_band": fusion.uncertain_band},
            "c2pa_sdk": c2pa_version,
            "auth": {"keys": bool(self.keys), "page": self.config.page},
            "limits": {
                "max_request_bytes": self.config.max_request_bytes,
                "max_files": self.config.max_files,
                "max_pixels": self.config.max_pixels,
                "timeout_s": self.config.timeout_s,
                "rate_limit_per_minute": self.config.rate_limit,
                "anonymous_rate_limit_per_minute": self.config.anonymous_rate_limit,
            },
            "probe_guard": None if self.probes is None else self.probes.describe(),
        }


def create_app(detector, config: ServiceConfig | None = None, keys: KeyStore | None = None) -> FastAPI:
    """The FastAPI app serving ``detector`` (a loaded :class:`~detector.bundle.ProvenanceDetector`)."""
    config = config or ServiceConfig()
    keys = keys if keys is not None else KeyStore.load(config.keys_file)
    service = Service(detector, config, keys)

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="detector",
        version=__version__,
        summary="Is an image AI-generated, does it carry our watermark or Content Credentials, which generator.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception):
        # The traceback goes to the server log; the client learns nothing about our internals.
        LOG.error("internal error", exc_info=exc)
        return JSONResponse(
            {"error": "internal", "detail": "internal error (see the server log)"}, status_code=500
        )

    @app.post("/v1/score", openapi_extra=_SCORE_BODY, tags=["scoring"])
    async def score(request: Request) -> dict:
        """Score uploaded images (multipart file fields, any name): one ProvenanceResult per image, in
        upload order, the same JSON as `detector score` writes, plus each passive branch's own P(AI)."""
        return await service.score(request)

    @app.get("/v1/health", tags=["service"])
    async def health() -> dict:
        return service.health()

    @app.get("/v1/version", tags=["service"])
    async def version() -> dict:
        """Package, bundle and model versions (sha256 of every weights file), thresholds, limits."""
        return service.version()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
