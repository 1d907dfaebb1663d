"""The service's settings: where it listens, who may call it, and the limits that keep it standing."""

from __future__ import annotations

from dataclasses import dataclass

from detector.config import ConfigError
from detector.io import DEFAULT_MAX_PIXELS
from detector.service.probes import CAPACITY, FORGED_PER_DAY, SIMILARITY

PAGE_MODES = ("open", "keyed")


@dataclass
class ServiceConfig:
    """Limits are checked before any decoding: request bytes, then files per request, then each image's
    header-declared pixel count."""

    host: str = "127.0.0.1"  # loopback by default: exposing the service is a deliberate choice
    port: int = 8000
    keys_file: str | None = None  # "name:sha256(key)" per line; see detector.service.auth
    page: str = "keyed"  # "open": requests without a key are allowed (rate limited per client address)
    rate_limit: float = 600.0  # score requests per minute per API key (also the burst size); 0: no limit
    anonymous_rate_limit: float = 60.0  # per client address, for requests without a key; 0: no limit
    max_request_bytes: int = 32 * 1024 * 1024  # whole multipart body
    max_files: int = 16  # images per request
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, from its header, before decoding
    timeout_s: float = 60.0  # a request not answered by then gets 504 (its queued images are dropped)
    batch_size: int = 16  # images per forward pass (micro-batching across requests)
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests once it has one image
    max_queue: int = 64  # images decoding or waiting for the model; beyond this: 503
    decode_workers: int = 2  # threads decoding uploads (off the event loop)
    score_workers: int = 1  # threads running the model (one forward at a time each)
    # The probe guard (detector.service.probes): pictures remembered (0: off), the cosine of content
    # features at which two uploads are one picture, forged readings a caller may cause a day (0: no
    # budget), and the file its state is kept in across restarts (None: forgotten on restart).
    probe_memory: int = CAPACITY
    probe_similarity: float = SIMILARITY
    forged_per_day: float = FORGED_PER_DAY
    probe_state: str | None = None

    def __post_init__(self) -> None:
        if self.page not in PAGE_MODES:
            raise ConfigError(f"page must be one of {PAGE_MODES}, got {self.page!r}")
        for name in ("max_request_bytes", "max_files", "max_pixels", "batch_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigError("timeout_s must be positive")
        if self.rate_limit < 0 or self.anonymous_rate_limit < 0:
            raise ConfigError("rate limits must be >= 0 (0: no limit)")
        if self.probe_memory < 0 or self.forged_per_day < 0 or not 0.0 < self.probe_similarity <= 1.0:
            raise ConfigError(
                "probe_memory and forged_per_day must be >= 0 (0: off) and probe_similarity in (0, 1]"
            )
        if self.decode_workers < 1 or self.score_workers < 1:
            raise ConfigError("decode_workers and score_workers must be at least 1")
