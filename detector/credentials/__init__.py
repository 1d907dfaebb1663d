"""Content Credentials (C2PA): read and validate a file's manifest as evidence, sign our own.

Reading (:class:`CredentialsReader`) reports whether a manifest is present, whether it validates
(``valid`` / ``untrusted`` / ``invalid``), who signed it, with what software, and the digital source type
it declares. Writing (:class:`CredentialsSigner`) adds a signed manifest declaring the image
AI-generated, with our watermark as its soft binding. Both run offline through ``c2pa-python``: no remote
manifest, trust list or OCSP fetch ever.
"""

from detector.credentials.certs import make_test_certificates
from detector.credentials.read import (
    AI_SOURCE_TYPES,
    CredentialsReader,
    c2pa_available,
    default_trust_anchors,
)
from detector.credentials.write import (
    SOFT_BINDING_ALG,
    TRAINED_ALGORITHMIC_MEDIA,
    CredentialsError,
    CredentialsSigner,
)

__all__ = [
    "AI_SOURCE_TYPES",
    "SOFT_BINDING_ALG",
    "TRAINED_ALGORITHMIC_MEDIA",
    "CredentialsError",
    "CredentialsReader",
    "CredentialsSigner",
    "c2pa_available",
    "default_trust_anchors",
    "make_test_certificates",
]
