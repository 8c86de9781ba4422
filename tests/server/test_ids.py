"""Signed prediction ids (mfl_server.ids): round trip, tamper and forgery rejection."""

from __future__ import annotations

import base64

import pytest

from mfl_server.ids import FORMAT, TAG_BYTES, IdSigner, InvalidId

SIGNER = IdSigner(b"secret-key", "churn")


@pytest.mark.parametrize("label", [0, 1, -7, 2**40, "yes", "ünïcode class", 2.5, -0.0, True, False])
def test_round_trip_carries_version_track_label_and_time(label):
    [row_id] = SIGNER.sign_batch(12, "canary", [label], 1764340000.1234)
    canonical, ref = SIGNER.verify(row_id)
    assert canonical == row_id
    assert (ref.version, ref.track, ref.label, type(ref.label)) == (12, "canary", label, type(label))
    assert ref.ts == pytest.approx(1764340000.123)


def test_ids_are_compact_url_safe_and_unique():
    ids = SIGNER.sign_batch(3, "stable", [1] * 1000, 1764340000.0)
    assert len(set(ids)) == 1000
    assert all(len(row_id) <= 48 for row_id in ids)
    assert all(set(row_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for row_id in ids)


def test_any_replica_with_the_key_verifies():
    [row_id] = SIGNER.sign_batch(1, "stable", ["no"], 1.0)
    assert IdSigner(b"secret-key", "churn").verify(row_id)[1].label == "no"


@pytest.mark.parametrize("other", [IdSigner(b"another-key", "churn"), IdSigner(b"secret-key", "fraud")])
def test_other_key_or_model_is_a_bad_signature(other):
    [row_id] = SIGNER.sign_batch(1, "stable", [1], 1.0)
    with pytest.raises(InvalidId) as caught:
        other.verify(row_id)
    assert caught.value.reason == "bad_signature"


def test_every_flipped_byte_is_rejected():
    [row_id] = SIGNER.sign_batch(1, "stable", [1], 1.0)
    raw = _decode(row_id)
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        with pytest.raises(InvalidId):
            SIGNER.verify(_encode(bytes(tampered)))


def test_forged_label_change_is_rejected():
    [row_id] = SIGNER.sign_batch(1, "stable", [0], 1.0)
    raw = _decode(row_id)
    forged = raw[: -TAG_BYTES - 1] + bytes([1]) + raw[-TAG_BYTES:]
    with pytest.raises(InvalidId) as caught:
        SIGNER.verify(_encode(forged))
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("garbage", ["", "garbage", "not base64 !!", "A" * 600, None, 17, ["x"], "AQAB"])
def test_garbled_ids_are_malformed(garbage):
    with pytest.raises(InvalidId) as caught:
        SIGNER.verify(garbage)
    assert caught.value.reason == "malformed"


def test_non_canonical_spelling_is_malformed():
    """Padding or spare bits would let one id be counted twice under two spellings."""
    [row_id] = SIGNER.sign_batch(1, "stable", [1], 1.0)
    with pytest.raises(InvalidId):
        SIGNER.verify(row_id + "=")


def test_signed_but_unknown_format_is_malformed():
    payload = bytes([FORMAT + 1, 0, 1]) + bytes(14) + b"i\x01"
    with pytest.raises(InvalidId) as caught:
        SIGNER.verify(SIGNER._finish(payload))
    assert caught.value.reason == "malformed"


def _decode(row_id: str) -> bytes:
    return base64.urlsafe_b64decode(row_id + "=" * (-len(row_id) % 4))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
