"""The verification service (``detector serve``): HTTP API, micro-batching, keys, limits, and a web page."""

from detector.service.app import Service, branch_probabilities, create_app
from detector.service.auth import ApiKeyFileError, KeyStore, RateLimiter, add_key, hash_key
from detector.service.batching import MicroBatcher
from detector.service.config import ServiceConfig
from detector.service.uploads import ServiceError

__all__ = [
    "ApiKeyFileError",
    "KeyStore",
    "MicroBatcher",
    "RateLimiter",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "add_key",
    "branch_probabilities",
    "create_app",
    "hash_key",
]
