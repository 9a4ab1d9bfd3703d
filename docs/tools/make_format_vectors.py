#!/usr/bin/env python3
"""Generate Pigeonhole message-format test vectors (AES-256-GCM).

Prints a JSON array to stdout; the output is deterministic (fixed, clearly
artificial keys and nonces -- never reuse a nonce like this in real code).

    python3 docs/tools/make_format_vectors.py > shared/tests/data/pigeonhole_format_vectors.json

Requires the `cryptography` package.
"""
import base64
import json

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_A = bytes(range(32))  # 00 01 02 ... 1f
KEY_B = bytes([0x42] * 32)
CLIENT_ID = "00000000-0000-4000-8000-000000000001"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def canonical_aad(aad) -> str:
    """The exact string whose UTF-8 bytes are authenticated ("" for no aad)."""
    if aad is None:
        return ""
    return json.dumps(aad, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def plaintext(type_, payload) -> str:
    return json.dumps({"type": type_, "payload": payload}, separators=(",", ":"), ensure_ascii=False)


CASES = [
    (
        "delivered message (poll): server-set aad binds the ciphertext to client_id, created_at and id",
        KEY_A, bytes([0x01] * 12), plaintext("greeting", {"text": "hi"}),
        {"client_id": CLIENT_ID, "created_at": "2026-11-25T12:00:00.000Z", "id": 1},
    ),
    (
        "client send without aad (aad null/absent => empty AAD bytes)",
        KEY_A, bytes([0x02] * 12), plaintext("status", {"battery": 87, "charging": False}),
        None,
    ),
    (
        "client send with aad holding a boolean, an integer and a non-ASCII string, keys given out of order",
        KEY_A, bytes([0x03] * 12), plaintext("note", {"text": "café ✓"}),
        {"urgent": True, "note": "café ✓", "attempt": 3},
    ),
    (
        "payload is a JSON array",
        KEY_B, bytes([0x04] * 12), plaintext("readings", [1, 2.5, "three", None, True]),
        None,
    ),
    (
        "payload is null",
        KEY_B, bytes(range(12)), plaintext("ping", None),
        None,
    ),
    (
        "empty aad object: authenticates the two bytes '{}', which differs from null/absent aad",
        KEY_A, bytes([0x05] * 12), plaintext("ping", None),
        {},
    ),
]


def main():
    out = []
    for description, key, nonce, pt, aad in CASES:
        assert len(key) == 32 and len(nonce) == 12
        aad_str = canonical_aad(aad)
        sealed = AESGCM(key).encrypt(nonce, pt.encode("utf-8"), aad_str.encode("utf-8"))
        out.append({
            "description": description,
            "personal_token": b64(key),
            "nonce": b64(nonce),
            "plaintext": pt,
            "aad": aad,
            "aad_bytes": aad_str,
            "ciphertext": b64(sealed[:-16]),
            "tag": b64(sealed[-16:]),
        })
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
