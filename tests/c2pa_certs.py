"""A throwaway C2PA signing identity for tests: an ES256 root CA and a signing certificate it
issued (C2PA refuses self-signed signers), written as the PEM files `gateway.c2pa` takes."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SigningFiles:
    certificate_chain_file: Path
    private_key_file: Path
    root_pem: str  # the trust anchor a validator needs to call the signature trusted


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sana-serve tests")])


def _usage(signer: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not signer,
                         crl_sign=not signer, encipher_only=False, decipher_only=False)


def make_signing_files(folder: Path) -> SigningFiles:
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(_name("test root")).issuer_name(_name("test root"))
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(signer=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder().subject_name(_name("sana-serve signer")).issuer_name(root.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(valid[0]).not_valid_after(valid[1])
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_usage(signer=True), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
              .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain, key_file = folder / "chain.pem", folder / "signer.key"
    chain.write_bytes(signer.public_bytes(pem) + root.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return SigningFiles(chain, key_file, root.public_bytes(pem).decode("ascii"))


def validation(data: bytes, mime_type: str, root_pem: str) -> tuple[str, dict]:
    """(validation state, the active manifest) of a signed file, trusting `root_pem`."""
    import io
    import json

    import c2pa

    context = c2pa.Context(c2pa.Settings.from_dict({"trust": {"trust_anchors": root_pem}}))
    reader = c2pa.Reader(mime_type, io.BytesIO(data), context=context)
    report = json.loads(reader.json())
    return reader.get_validation_state(), report["manifests"][report["active_manifest"]]
