"""C2PA Content Credentials: a signed manifest in every returned file, when the operator configures
a signing certificate and key (`gateway.c2pa`).

The manifest says what the XMP marking says (serve.output.provenance), but signed: one `c2pa.created`
action with the IPTC digital source type `trainedAlgorithmicMedia` and sana-serve as the software
agent, bound to the file's bytes by a hash, so any C2PA validator (the `c2pa` tools, Adobe's
Content Authenticity site) shows who generated the image and detects an edit. No thumbnail (the
file is its own picture) and no prompt (the parameters, when on, are in the file's metadata).

Uses the `c2pa-python` bindings of the reference C2PA SDK (`pip install 'sana-serve[c2pa]'`).
Signing runs in the gateway's encode threads after encoding: a few milliseconds per image.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from serve.config import C2paConfig, ConfigError
from serve.output.provenance import DIGITAL_SOURCE_TYPE, software

_MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def manifest() -> dict:
    name, _, version = software().partition(" ")
    return {
        "claim_generator_info": [{"name": name, "version": version or "unknown"}],
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
            "action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE,
            "softwareAgent": {"name": name, "version": version or "unknown"},
        }]}}],
    }


class ContentCredentials:
    """Signs encoded images with the configured certificate chain and key."""

    def __init__(self, config: C2paConfig) -> None:
        try:
            import c2pa
        except ImportError:
            raise ConfigError("gateway.c2pa needs the c2pa-python package: pip install 'sana-serve[c2pa]'") from None
        self._c2pa = c2pa
        chain, key = _read(config.certificate_chain_file, "certificate_chain_file"), _read(
            config.private_key_file, "private_key_file")
        info = c2pa.C2paSignerInfo(config.algorithm.encode(), chain, key,
                                   config.timestamp_url.encode() if config.timestamp_url else None)
        try:
            self._signer = c2pa.Signer.from_info(info)
        except c2pa.C2paError as exc:
            raise ConfigError(f"gateway.c2pa: cannot sign with this certificate and key: {exc}") from None
        self._context = c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
        self._manifest = json.dumps(manifest())
        # One signer for the replica; the SDK does not promise that it may be used from several
        # encode threads at once, and a signature takes milliseconds.
        self._lock = threading.Lock()

    def sign(self, data: bytes, output_format: str) -> bytes:
        builder = self._c2pa.Builder(self._manifest, context=self._context)
        signed = io.BytesIO()
        with self._lock:
            builder.sign(self._signer, _MIME_TYPES[output_format], io.BytesIO(data), signed)
        return signed.getvalue()


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"gateway.c2pa.{key}: cannot read {path}: {exc.strerror or exc}") from None
