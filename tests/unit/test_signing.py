"""registry.signing and fleet.shared.signature: keys, signatures and the device-side check."""

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.shared.signature import ReleaseClaim, file_sha256, verify_claim, verify_variant
from registry.signing import PRIVATE, PUBLIC, load_or_create_key, public_pem, sign_claim


def claim_of(path: Path, variant: str = "int8-static", **changes: object) -> ReleaseClaim:
    fields: dict[str, object] = {
        "model": "digits", "version": "3", "variant": variant, "sha256": file_sha256(path),
        "release": 3, **changes,
    }  # fmt: skip
    return ReleaseClaim(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_key_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    first = load_or_create_key(keys)
    private = keys / PRIVATE
    assert private.is_file()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (keys / PUBLIC).read_bytes() == public_pem(first)
    assert public_pem(first).startswith(b"-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    second = load_or_create_key(keys)
    assert public_pem(second) == public_pem(first)
    assert private.read_bytes() == before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_separate_homes_get_separate_keys(tmp_path: Path) -> None:
    a = load_or_create_key(tmp_path / "a")
    b = load_or_create_key(tmp_path / "b")
    assert public_pem(a) != public_pem(b)


def test_non_ed25519_key_file_is_rejected(tmp_path: Path) -> None:
    tmp_path.joinpath(PRIVATE).write_bytes(
        Ed448PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="is not an ed25519 private key"):
        load_or_create_key(tmp_path)


def test_signed_message_layout() -> None:
    claim = ReleaseClaim(model="digits", version="3", variant="int8", sha256="ab12", release=3)
    assert claim.message() == b"edgeloop-release-v2\ndigits\n3\nint8\nab12\n3"
    with pytest.raises(ValueError, match="newline"):
        ReleaseClaim(model="a\nb", version="3", variant="x", sha256="ab", release=3).message()


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * 5000  # more than one 1 MiB read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_round_trip_tamper_and_wrong_name(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "int8-static.onnx"
    path.write_bytes(b"model bytes")
    claim = claim_of(path)
    signature = sign_claim(key, claim)
    assert len(base64.b64decode(signature)) == 64
    pem = public_pem(key)
    assert verify_variant(pem, claim, path, signature) is True
    # The same bytes claimed as anything else they were not signed as are rejected: another
    # variant's name, another model (a cross-model swap), another version, another release.
    for changes in ({"variant": "fp32"}, {"model": "faces"}, {"version": "4"}, {"release": 4}):
        assert verify_variant(pem, claim_of(path, **changes), path, signature) is False, changes
    # A different key does not verify.
    other = public_pem(Ed25519PrivateKey.generate())
    assert verify_variant(other, claim, path, signature) is False
    # Garbage instead of a signature is a plain "no".
    assert verify_variant(pem, claim, path, "!!not-base64!!") is False
    assert verify_variant(pem, claim, path, base64.b64encode(b"x" * 64).decode()) is False
    # One changed byte in the file: the claim's sha256 no longer matches, whatever it says.
    path.write_bytes(b"model bytez")
    assert verify_variant(pem, claim, path, signature) is False
    assert verify_claim(pem, claim, signature) is True  # the claim itself is still signed


def test_non_ed25519_public_key_raises(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    pem = (
        Ed448PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="not an ed25519 key"):
        verify_claim(pem, claim_of(path), "AAAA")


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=0, max_size=4096), flip=st.integers(min_value=0))
def test_random_files_verify_and_any_flip_breaks_it(
    tmp_path_factory: pytest.TempPathFactory, key: Ed25519PrivateKey, data: bytes, flip: int
) -> None:
    path = tmp_path_factory.mktemp("variant") / "fp32.onnx"
    path.write_bytes(data)
    claim = claim_of(path, "fp32")
    signature = sign_claim(key, claim)
    pem = public_pem(key)
    assert verify_variant(pem, claim, path, signature)
    if data:
        index = flip % len(data)
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        path.write_bytes(bytes(tampered))
    else:
        path.write_bytes(b"\x00")
    assert not verify_variant(pem, claim, path, signature)
