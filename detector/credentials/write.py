"""Sign an image with a C2PA manifest declaring it AI-generated, bound to our watermark.

The manifest has one ``c2pa.created`` action with the IPTC digital source type
``trainedAlgorithmicMedia`` and a ``c2pa.soft-binding`` assertion naming our watermark (key id and
payload): a copy whose manifest was stripped still carries the watermark, whose payload leads back to
the registry record ("durable Content Credentials"). No thumbnail is embedded (it would copy the
picture into the manifest).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

from detector import __version__
from detector.errors import DetectorError
from detector.io import atomic_write_bytes
from detector.io.sniff import sniff_mime

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: Our soft-binding algorithm name (the value is base64 of "key_id:payload").
SOFT_BINDING_ALG = "io.detector.watermark.v1"


class CredentialsError(DetectorError, RuntimeError):
    """A manifest cannot be signed (bad certificate or key, unsupported format...)."""


def _algorithm(key_pem: bytes) -> str:
    """The C2PA signing algorithm that fits the private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(f"not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in algs:
            raise CredentialsError(f"unsupported EC curve {key.curve.name} (use P-256, P-384 or P-521)")
        return algs[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise CredentialsError(f"unsupported private key type {type(key).__name__}")


def ai_manifest(title: str, soft_binding: tuple[str, int] | None = None) -> dict:
    """The manifest definition: created by an AI model, optionally bound to (key id, payload)."""
    assertions: list[dict] = [
        {
            "label": "c2pa.actions",
            "data": {
                "actions": [
                    {
                        "action": "c2pa.created",
                        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                        "softwareAgent": {"name": "detector", "version": __version__},
                    }
                ]
            },
        }
    ]
    if soft_binding is not None:
        key_id, payload = soft_binding
        value = base64.b64encode(f"{key_id}:{payload}".encode("ascii")).decode("ascii")
        assertions.append(
            {
                "label": "c2pa.soft-binding",
                "data": {"alg": SOFT_BINDING_ALG, "blocks": [{"scope": {}, "value": value}]},
            }
        )
    return {
        "claim_generator_info": [{"name": "detector", "version": __version__}],
        "title": title,
        "assertions": assertions,
    }


class CredentialsSigner:
    """Signs images with a certificate chain (PEM, signing cert first) and its private key (PEM)."""

    def __init__(self, chain: str | os.PathLike, key: str | os.PathLike):
        import c2pa

        self._c2pa = c2pa
        try:
            self.chain = Path(chain).read_bytes()
            self.key = Path(key).read_bytes()
        except OSError as exc:
            raise CredentialsError(f"cannot read the certificate or key ({exc})") from None
        if b"BEGIN CERTIFICATE" not in self.chain:
            raise CredentialsError(f"{chain}: no PEM certificate in it")
        self.alg = _algorithm(self.key)
        self.supported = set(c2pa.Builder.get_supported_mime_types())

    def sign_bytes(self, data: bytes, title: str, soft_binding: tuple[str, int] | None = None) -> bytes:
        """``data`` (an image file's bytes) with a signed manifest embedded."""
        c2pa = self._c2pa
        mime = sniff_mime(data[:32])
        if mime is None or mime not in self.supported:
            raise CredentialsError(f"{title}: cannot embed Content Credentials in a {mime or 'unknown'} file")
        settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}}
        context = c2pa.Context(c2pa.Settings.from_dict(settings))
        info = c2pa.C2paSignerInfo(self.alg.encode(), self.chain, self.key, None)
        out = io.BytesIO()
        try:
            signer = c2pa.Signer.from_info(info)
            with c2pa.Builder(json.dumps(ai_manifest(title, soft_binding)), context) as builder:
                builder.sign(signer, mime, io.BytesIO(data), out)
        except c2pa.C2paError as exc:
            raise CredentialsError(f"{title}: signing failed ({exc})") from None
        return out.getvalue()

    def sign_file(self, path: str | os.PathLike, soft_binding: tuple[str, int] | None = None) -> Path:
        """Embed a signed manifest into the image file at ``path`` (rewritten atomically)."""
        path = Path(path)
        signed = self.sign_bytes(path.read_bytes(), path.name, soft_binding)
        atomic_write_bytes(path, signed)
        return path
