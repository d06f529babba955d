"""C2PA Content Credentials: a manifest signed into every format we return, validated with the
same SDK (c2pa-python) against the test root; what the other provenance layers wrote survives."""

from __future__ import annotations

import numpy as np
import pytest

from serve.config import C2paConfig, ConfigError
from serve.output.content_credentials import ContentCredentials
from serve.output.encoding import MEDIA_TYPES, encode_image
from serve.output.provenance import DIGITAL_SOURCE_TYPE, Provenance
from tests.c2pa_certs import make_signing_files, validation
from tests.unit.test_provenance import read_back


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    return make_signing_files(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def credentials(signing):
    return ContentCredentials(C2paConfig(certificate_chain_file=str(signing.certificate_chain_file),
                                         private_key_file=str(signing.private_key_file)))


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_each_format_gets_a_trusted_manifest_and_keeps_its_other_metadata(signing, credentials, output_format):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    data = encode_image(pixels, output_format, Provenance("a fox\nSteps: 2"), credentials=credentials)
    state, manifest = validation(data, MEDIA_TYPES[output_format], signing.root_pem)
    assert state == "Trusted"
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert actions[0]["action"] == "c2pa.created" and actions[0]["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert manifest["signature_info"]["common_name"] == "sana-serve signer"
    assert manifest["claim_generator_info"][0]["name"] == "sana-serve"
    xmp, parameters = read_back(data)
    assert DIGITAL_SOURCE_TYPE in xmp and parameters == "a fox\nSteps: 2"


def test_an_edited_file_no_longer_validates(signing, credentials):
    data = bytearray(encode_image(np.full((64, 64, 3), 90, np.uint8), "jpeg", credentials=credentials))
    assert validation(bytes(data), "image/jpeg", signing.root_pem)[0] == "Trusted"
    data[-20] ^= 0xFF  # a byte of the picture itself
    assert validation(bytes(data), "image/jpeg", signing.root_pem)[0] == "Invalid"


def test_without_the_root_the_signature_is_valid_but_not_trusted(credentials):
    import io

    import c2pa

    data = encode_image(np.full((64, 64, 3), 90, np.uint8), "png", credentials=credentials)
    assert c2pa.Reader("image/png", io.BytesIO(data)).get_validation_state() == "Valid"


def test_unusable_signing_files_are_configuration_errors(signing, tmp_path):
    with pytest.raises(ConfigError, match="private_key_file: cannot read"):
        ContentCredentials(C2paConfig(certificate_chain_file=str(signing.certificate_chain_file),
                                      private_key_file=str(tmp_path / "missing.key")))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match="cannot sign with this certificate and key"):
        ContentCredentials(C2paConfig(certificate_chain_file=str(signing.certificate_chain_file),
                                      private_key_file=str(garbage)))
