"""Signed prediction ids: any replica can score late feedback without shared state.

An id is the url-safe base64 (no padding) of ``payload || tag``:

    payload = 0x01 (format) | track (1 byte: 0 stable, 1 canary) | version (unsigned LEB128)
              | time (6 bytes, big-endian Unix milliseconds) | nonce (8 random bytes)
              | label kind (1 byte: i, f, s, b) | label bytes (the rest)
    tag     = HMAC-SHA256(key, b"mfl-id\\0" + model + b"\\0" + payload)[:16]

The model name is bound into the tag (not carried), so an id from another model's server that
happens to share the key is rejected. A binary-class or integer label gives a 47-character id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Any

FORMAT = 1
TAG_BYTES = 16
NONCE_BYTES = 8
MAX_ID_CHARS = 512
_TRACK_CODES = {"stable": 0, "canary": 1}
_TRACK_NAMES = {code: name for name, code in _TRACK_CODES.items()}
_DOUBLE = struct.Struct(">d")
_MILLIS_BYTES = 6


class InvalidId(ValueError):
    """``reason`` is the `mfl_feedback_rejected_total` label: malformed or bad_signature."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PredictionRef:
    version: int
    track: str
    label: Any  # int, float, str or bool, as the model predicted it
    ts: float  # Unix seconds, millisecond precision


class IdSigner:
    def __init__(self, key: bytes, model: str) -> None:
        self._base_mac = hmac.new(key, b"mfl-id\0" + model.encode() + b"\0", hashlib.sha256)

    def sign_batch(self, version: int, track: str, labels: list[Any], ts: float) -> list[str]:
        """One id per label; the header is shared, the nonce is per row."""
        header = bytes((FORMAT, _TRACK_CODES[track])) + _uvarint(version) + _millis(ts)
        nonces = os.urandom(NONCE_BYTES * len(labels))
        return [
            self._finish(header + nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES] + encode_label(label))
            for i, label in enumerate(labels)
        ]

    def verify(self, text: Any) -> tuple[str, PredictionRef]:
        """The canonical id and what it carries; raises InvalidId."""
        raw = _decode(text)
        payload, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(self._tag(payload), tag):
            raise InvalidId("bad_signature", "prediction id signature does not verify")
        return text, _parse_payload(payload)

    def _finish(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(payload + self._tag(payload)).rstrip(b"=").decode("ascii")

    def _tag(self, payload: bytes) -> bytes:
        mac = self._base_mac.copy()
        mac.update(payload)
        return mac.digest()[:TAG_BYTES]


def encode_label(label: Any) -> bytes:
    if isinstance(label, bool):
        return b"b" + bytes((int(label),))
    if isinstance(label, int):
        return b"i" + label.to_bytes(label.bit_length() // 8 + 1, "big", signed=True)
    if isinstance(label, float):
        return b"f" + _DOUBLE.pack(label)
    if isinstance(label, str):
        return b"s" + label.encode("utf-8")
    raise TypeError(f"cannot put a {type(label).__name__} label in a prediction id")


def decode_label(kind: int, data: bytes) -> Any:
    if kind == ord("i") and data:
        return int.from_bytes(data, "big", signed=True)
    if kind == ord("f") and len(data) == _DOUBLE.size:
        return _DOUBLE.unpack(data)[0]
    if kind == ord("s"):
        return data.decode("utf-8")
    if kind == ord("b") and len(data) == 1 and data[0] in (0, 1):
        return bool(data[0])
    raise ValueError("bad label encoding")


def _decode(text: Any) -> bytes:
    if not isinstance(text, str) or not text or len(text) > MAX_ID_CHARS:
        raise InvalidId("malformed", f"prediction id must be a non-empty string of at most {MAX_ID_CHARS} characters")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidId("malformed", "prediction id is not url-safe base64") from None
    # Non-canonical spellings of the same bytes would dodge de-duplication and the trainer's join.
    if len(raw) < TAG_BYTES + 3 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
        raise InvalidId("malformed", "prediction id has the wrong length or encoding")
    return raw


def _parse_payload(payload: bytes) -> PredictionRef:
    """Only signed payloads get here, so a failure means a format this server does not know."""
    try:
        if payload[0] != FORMAT:
            raise ValueError(f"unknown id format {payload[0]}")
        track = _TRACK_NAMES[payload[1]]
        version, offset = _read_uvarint(payload, 2)
        millis = int.from_bytes(payload[offset : offset + _MILLIS_BYTES], "big")
        offset += _MILLIS_BYTES + NONCE_BYTES
        label = decode_label(payload[offset], payload[offset + 1 :])
    except (IndexError, KeyError, ValueError, UnicodeDecodeError) as error:
        raise InvalidId("malformed", f"prediction id payload is not readable: {error}") from None
    return PredictionRef(version=version, track=track, label=label, ts=millis / 1000.0)


def _millis(ts: float) -> bytes:
    return max(0, min(int(ts * 1000), (1 << (8 * _MILLIS_BYTES)) - 1)).to_bytes(_MILLIS_BYTES, "big")


def _uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("version must be >= 0")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while shift < 64:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise ValueError("version varint too long")
