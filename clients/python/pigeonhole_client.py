#!/usr/bin/env python3
"""Pigeonhole Python reference client.

Install it with ``pip install ./clients/python`` from a checkout (the
``pigeonhole-client`` command, ``py.typed``), or copy this single file into
your project. It needs Python 3.9 or newer and two packages, ``requests`` and
``cryptography`` (``pip install requests cryptography`` for a copied file).

It speaks only the documented HTTP API (``docs/api.md``) and encryption
format (``docs/encryption.md``): AES-256-GCM under the client's personal key,
with the AAD in canonical form.

Library use::

    from pigeonhole_client import PigeonholeClient, publish

    creds = PigeonholeClient.register("http://127.0.0.1:8080", SECRET_FINGERPRINT, name="laptop")
    client = PigeonholeClient.from_credentials(creds)
    messages = client.poll()                 # decrypted and verified
    for m in messages:
        print(m.id, m.type, m.payload)
    if messages.next_cursor is not None:     # past expired ids too (a page may hold none)
        client.ack(messages.next_cursor)
    client.send("status", {"ok": True})      # fresh nonce, safe retries
    client.listen(lambda m: print(m.payload))  # the 3 s -> 30 s backoff loop
    publish(URL, ADMIN_TOKEN, [client.client_id], "greeting", {"text": "hi"})  # Idempotency-Key, safe retries
    r = publish(URL, ADMIN_TOKEN, type="alarm", payload="door open", to_tags=["eu"], ttl_secs=300)
    print(publish_status(URL, ADMIN_TOKEN, r.publish_id).acknowledged)  # admin: delivery status
    for row in iter_recipient_status(URL, ADMIN_TOKEN, r.publish_id):  # every recipient, all pages
        print(row.client_id, row.message_id, row.status)
    for m in iter_sent(URL, ADMIN_TOKEN, client.client_id):  # admin: what the client sent, oldest first
        print(m.id, m.type, m.payload)
    client.rotate()                          # new api_token and personal key; the old token is dead

Plain ``http://`` is refused (``InsecureTransportError``) unless the host is
loopback (localhost, 127.0.0.0/8, ::1): the API token, and in the register
and rotate answers the personal key, would cross the network unencrypted.
Pass ``insecure_http=True`` to allow it anyway.

Command line (``pigeonhole-client --help`` installed, ``python pigeonhole_client.py --help`` copied)::

    python pigeonhole_client.py register --url http://127.0.0.1:8080 --name laptop
    python pigeonhole_client.py listen [--once] [--json]
    python pigeonhole_client.py send --type status --payload '{"ok": true}'
    python pigeonhole_client.py rotate [--new-fingerprint]
    python pigeonhole_client.py publish --to CLIENT_ID --type greeting --payload '{"text": "hi"}'
    python pigeonhole_client.py publish --to-tag eu --type alarm --payload '"door open"' --ttl 300
    python pigeonhole_client.py status PUBLISH_ID [--recipients] [--json]
    python pigeonhole_client.py inbox CLIENT_ID [--after N] [--follow] [--json]
"""
from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import logging
import os
import random
import secrets
import sys
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote, urlsplit

import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__version__ = "0.1.0"

__all__ = [
    "PigeonholeClient",
    "Credentials",
    "Message",
    "Messages",
    "SendResult",
    "PublishResult",
    "PublishStatus",
    "RecipientStatus",
    "SentMessage",
    "SentPage",
    "ListenStats",
    "PigeonholeError",
    "ApiError",
    "RateLimited",
    "Unavailable",
    "NetworkError",
    "DecryptionError",
    "InsecureTransportError",
    "register",
    "publish",
    "publish_status",
    "iter_recipient_status",
    "read_sent",
    "iter_sent",
    "canonical_aad",
    "encrypt",
    "decrypt",
    "next_interval",
    "backoff_schedule",
    "jittered_interval",
    "save_credentials",
    "load_credentials",
    "is_loopback_host",
    "check_transport",
    "INITIAL_INTERVAL",
    "INTERVAL_STEP",
    "MAX_INTERVAL",
]

log = logging.getLogger("pigeonhole")

API_PREFIX = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8080"
USER_AGENT = f"pigeonhole-python/{__version__}"
NONCE_LEN = 12
TAG_LEN = 16
KEY_LEN = 32
DEFAULT_POLL_LIMIT = 100  # the server's default page size

#: The short-poll backoff (docs/api.md, "Polling clients: backoff schedule").
INITIAL_INTERVAL = 3.0
INTERVAL_STEP = 3.0
MAX_INTERVAL = 30.0
#: Every wait of that schedule is multiplied by a random factor in this range
#: (jitter), so clients started together do not poll in lockstep.
JITTER_MIN = 0.9
JITTER_MAX = 1.1


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class PigeonholeError(Exception):
    """Base class of every error this module raises on purpose."""


class ApiError(PigeonholeError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``code`` the documented error code
    (``unauthorized``, ``validation_failed``, ...; ``http_<status>`` if the body
    was not a Pigeonhole error) and ``message`` the human-readable text.
    Branch on ``code``, not on ``message``. ``retry_after`` is the
    ``Retry-After`` of a 429 or 503 in seconds (``None`` otherwise).
    """

    def __init__(self, status: int, code: str, message: str, retry_after: Optional[int] = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RateLimited(ApiError):
    """429 ``rate_limited``: wait at least ``retry_after`` seconds before polling again."""

    retry_after: int

    def __init__(self, retry_after: int, message: str = "too many polls") -> None:
        super().__init__(429, "rate_limited", message, retry_after)


class Unavailable(ApiError):
    """503 (``unavailable``): the server's storage or queue stayed unavailable.

    The same request is safe to repeat after ``retry_after`` seconds (``None``
    if the response had no ``Retry-After``, e.g. from a proxy).
    """

    def __init__(self, retry_after: Optional[int], code: str = "unavailable",
                 message: str = "service unavailable") -> None:
        super().__init__(503, code, message, retry_after)


class NetworkError(PigeonholeError):
    """The request did not get an HTTP response (connection refused, timeout, reset...).

    The original ``requests`` exception is chained as ``__cause__``.
    """


class DecryptionError(PigeonholeError):
    """A delivered message failed verification: its ``aad`` does not match its
    envelope, the AES-GCM tag does not verify, or the plaintext is malformed.

    Treat it as tampering: never use the content. ``message_id`` is the id of
    the message as delivered (``None`` if unknown).
    """

    def __init__(self, reason: str, message_id: Optional[int] = None) -> None:
        where = f"message {message_id}: " if message_id is not None else ""
        super().__init__(where + reason)
        self.reason = reason
        self.message_id = message_id


class InsecureTransportError(PigeonholeError):
    """A plain ``http://`` URL whose host is not loopback, without ``insecure_http=True``.

    Nothing was sent. ``url`` is the refused URL and ``host`` its host.
    """

    def __init__(self, url: str, host: str) -> None:
        super().__init__(
            f"refusing plain http:// to {host} ({url}): the API token, and in the register and rotate "
            "answers the personal key, would cross the network unencrypted. Use https://, or pass "
            f"insecure_http=True (--insecure-http) if you trust every network between here and {host}. "
            "Loopback (localhost, 127.0.0.0/8, ::1) is always allowed.")
        self.url = url
        self.host = host


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (brackets allowed): traffic that never leaves the machine."""
    host = host[:-1] if host.endswith(".") else host
    if host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return address == ipaddress.IPv6Address("::1")
    return address.is_loopback


def check_transport(url: str, insecure_http: bool = False) -> None:
    """Raise ``InsecureTransportError`` for plain ``http://`` to a host that is not loopback,
    unless ``insecure_http``; ``https://`` and loopback always pass."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "http" or insecure_http:
        return
    host = parts.hostname or ""
    if not is_loopback_host(host):
        raise InsecureTransportError(url.strip(), host)


# ---------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """What ``register`` returns, plus where it came from.

    ``personal_token`` (the AES key) and ``api_token`` are secrets, and so is
    ``fingerprint``: anyone who knows it can register again and get the other
    two back. Store them like passwords (``save_credentials`` writes mode 0600).
    """

    base_url: str
    client_id: str
    api_token: str
    personal_token: str
    fingerprint: Optional[str] = None
    name: Optional[str] = None
    #: True when this registration created the client (201), False for a known fingerprint (200).
    created: bool = field(default=False, compare=False)
    #: Plain ``http://`` to a host that is not loopback is allowed for ``base_url`` (registered with it).
    insecure_http: bool = False
    #: Set by the command line's ``rotate`` while a rotation's outcome is unknown: the fingerprint
    #: the client has if the server did rotate (the next ``rotate`` completes it).
    pending_fingerprint: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-serialisable form stored by ``save_credentials`` (without ``created``)."""
        data: Dict[str, Any] = {
            "base_url": self.base_url,
            "client_id": self.client_id,
            "api_token": self.api_token,
            "personal_token": self.personal_token,
            "fingerprint": self.fingerprint,
            "name": self.name,
        }
        if self.insecure_http:
            data["insecure_http"] = True
        if self.pending_fingerprint:
            data["pending_fingerprint"] = self.pending_fingerprint
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Credentials":
        """Build credentials from ``to_dict`` output (or a register response plus ``base_url``)."""
        missing = [k for k in ("base_url", "client_id", "api_token", "personal_token") if not data.get(k)]
        if missing:
            raise ValueError("credentials are missing " + ", ".join(missing))
        return cls(
            base_url=str(data["base_url"]),
            client_id=str(data["client_id"]),
            api_token=str(data["api_token"]),
            personal_token=str(data["personal_token"]),
            fingerprint=data.get("fingerprint"),
            name=data.get("name"),
            insecure_http=bool(data.get("insecure_http", False)),
            pending_fingerprint=data.get("pending_fingerprint") or None,
        )

    def __repr__(self) -> str:  # never show the secrets by accident
        return f"Credentials(base_url={self.base_url!r}, client_id={self.client_id!r}, name={self.name!r})"


@dataclass(frozen=True)
class Message:
    """A delivered message that passed verification and decryption.

    ``type`` and ``payload`` come from the decrypted plaintext (the
    authoritative values); ``id``, ``created_at`` and ``aad`` from the envelope.
    """

    id: int
    type: str
    payload: Any
    created_at: str
    aad: Dict[str, Any]

    @property
    def created(self) -> datetime:
        """``created_at`` as an aware UTC ``datetime``."""
        return parse_timestamp(self.created_at)

    def to_dict(self) -> Dict[str, Any]:
        """``{"id", "type", "created_at", "payload"}``, e.g. for one-JSON-object-per-line output."""
        return {"id": self.id, "type": self.type, "created_at": self.created_at, "payload": self.payload}


class Messages(List[Message]):
    """What ``PigeonholeClient.poll`` returns: the verified, decrypted messages (a list) and
    ``next_cursor``, the id to acknowledge.

    ``next_cursor`` moves past every id the poll covered, expired ones included, so it can be
    above the last message's id, and a page whose messages all expired is an empty list with a
    ``next_cursor``: acknowledge it all the same. It is ``None`` after a 204 (nothing new).
    """

    def __init__(self, messages: Iterable[Message] = (), next_cursor: Optional[int] = None) -> None:
        super().__init__(messages)
        self.next_cursor = next_cursor


@dataclass(frozen=True)
class SendResult:
    """Outcome of a send: ``id`` is this client's send sequence number.

    ``status`` is 201 for a newly stored message and 200 when the server
    recognised a retry of an earlier body (``duplicate``).
    """

    id: int
    status: int

    @property
    def duplicate(self) -> bool:
        """True if the server had already stored this exact body (a retry)."""
        return self.status == 200


@dataclass(frozen=True)
class PublishResult:
    """Outcome of an admin publish: the ``publish_id``, the number of distinct
    recipients sent (``None`` for ``to_tags`` and ``to_all``: the fan-out counts
    them, ``publish_status`` shows the count) and the ``Idempotency-Key`` it was
    sent under."""

    publish_id: str
    recipients: Optional[int]
    idempotency_key: Optional[str] = None


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient of a publish (``iter_recipient_status``): its ``client_id``, the
    message's id in its inbox (``message_id``, ``None`` until the fan-out reached it and for
    unknown ids) and ``status``: ``"pending"``, ``"delivered"``, ``"acknowledged"``,
    ``"expired"`` or ``"unknown"``."""

    client_id: str
    message_id: Optional[int]
    status: str

    def to_dict(self) -> Dict[str, Any]:
        """``{"client_id", "message_id", "status"}``, as the server sent it."""
        return {"client_id": self.client_id, "message_id": self.message_id, "status": self.status}


@dataclass(frozen=True)
class PublishStatus:
    """How far a publish got (``publish_status``; ``GET /messages/publish/{publish_id}``).

    ``recipients`` is the number of distinct recipients (``None`` while a tag or
    everyone audience is still being enumerated). Of them: ``delivered`` (the inbox
    holds or held the message, acknowledged ones included), ``acknowledged`` (the
    cursor passed it before it expired), ``expired`` (the copy expired
    unacknowledged), ``unknown`` (ids that named no client) and ``pending`` (not
    reached by the fan-out yet). ``state`` is ``"queued"``, ``"delivering"`` or
    ``"done"`` (every recipient reached). ``audience`` is ``{"to_client_ids": n}``,
    ``{"to_tags": [...]}`` or ``{"to_all": True}``. With ``recipients=True``
    ``recipient_status`` holds one page of recipients and ``next_page_token`` the
    token of the next (``None`` at the end).
    """

    publish_id: str
    type: str
    created_at: str
    audience: Dict[str, Any]
    expires_at: Optional[str]
    recipients: Optional[int]
    delivered: int
    acknowledged: int
    expired: int
    unknown: int
    pending: int
    state: str
    recipient_status: Optional[List[RecipientStatus]] = None
    next_page_token: Optional[str] = None

    @property
    def unacknowledged(self) -> Optional[int]:
        """Recipients still to acknowledge: ``recipients`` less the settled ones (acknowledged,
        expired, unknown) and the pending ones; ``None`` while ``recipients`` is unknown."""
        if self.recipients is None:
            return None
        return max(0, self.recipients - self.acknowledged - self.expired - self.unknown - self.pending)

    @property
    def finished(self) -> bool:
        """``state == "done"`` and every delivered copy acknowledged or expired: nothing more changes."""
        return self.state == "done" and self.unacknowledged == 0

    def to_dict(self) -> Dict[str, Any]:
        """The status as the server sent it (``recipient_status`` and ``next_page_token`` only when set)."""
        data: Dict[str, Any] = {
            "publish_id": self.publish_id, "type": self.type, "created_at": self.created_at,
            "audience": self.audience, "expires_at": self.expires_at, "recipients": self.recipients,
            "delivered": self.delivered, "acknowledged": self.acknowledged, "expired": self.expired,
            "unknown": self.unknown, "pending": self.pending, "state": self.state,
        }
        if self.recipient_status is not None:
            data["recipient_status"] = [r.to_dict() for r in self.recipient_status]
        if self.next_page_token is not None:
            data["next_page_token"] = self.next_page_token
        return data


@dataclass(frozen=True)
class SentMessage:
    """A message a client sent, as the admin reads it back (``read_sent``,
    ``iter_sent``). The server opened its at-rest seal: ``type`` and
    ``payload`` are plaintext; ``aad`` is what the client sent as aad
    (``{"client_id": ...}`` plus any fields of its own; ``None`` when it sent none)."""

    id: int
    type: str
    payload: Any
    aad: Optional[Dict[str, Any]]
    created_at: str

    @property
    def created(self) -> datetime:
        """``created_at`` as an aware UTC ``datetime``."""
        return parse_timestamp(self.created_at)

    def to_dict(self) -> Dict[str, Any]:
        """``{"id", "type", "payload", "aad", "created_at"}``, as the server sent it."""
        return {"id": self.id, "type": self.type, "payload": self.payload, "aad": self.aad,
                "created_at": self.created_at}


@dataclass(frozen=True)
class SentPage:
    """One page of ``GET /clients/{client_id}/sent``: ``messages`` in ascending id
    order and ``next_after``, the ``after`` of the next page (the last id). After a
    204 (nothing newer) ``messages`` is empty and ``next_after`` is the ``after``
    that was asked for."""

    messages: List[SentMessage]
    next_after: int


@dataclass
class ListenStats:
    """Counters returned by ``PigeonholeClient.listen``."""

    polls: int = 0
    messages: int = 0
    invalid: int = 0
    errors: int = 0
    rate_limited: int = 0
    cursor: Optional[int] = None
    #: Every wait the loop asked for, in seconds, in order (the backoff as it happened).
    sleeps: List[float] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------

def next_interval(current: float, got_messages: bool) -> float:
    """The poll delay that follows ``current``.

    After messages the delay resets to 3 s; after an empty poll (and after a
    network error or 5xx) it grows by 3 s, up to 30 s.
    """
    if got_messages:
        return INITIAL_INTERVAL
    return min(current + INTERVAL_STEP, MAX_INTERVAL)


def jittered_interval(base: float, unit: Optional[float] = None) -> float:
    """``base`` multiplied by a factor in [0.9, 1.1] (jitter).

    ``unit`` is a uniform draw from [0, 1) (clamped), by default
    ``random.random()``; 0.5 gives ``base`` itself.
    """
    if unit is None:
        unit = random.random()
    unit = min(max(unit, 0.0), 1.0)
    return base * (JITTER_MIN + (JITTER_MAX - JITTER_MIN) * unit)


def backoff_schedule(empty_polls: int) -> List[float]:
    """The waits after ``empty_polls`` consecutive empty polls: ``[3, 6, 9, ..., 30, 30, ...]``."""
    waits: List[float] = []
    delay = INITIAL_INTERVAL
    for _ in range(empty_polls):
        waits.append(delay)
        delay = next_interval(delay, got_messages=False)
    return waits


# ---------------------------------------------------------------------------
# Encryption format (docs/encryption.md)
# ---------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str, length: Optional[int] = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what} is not valid base64") from e
    if length is not None and len(raw) != length:
        raise ValueError(f"{what} must be {length} bytes (got {len(raw)})")
    return raw


def key_from_token(personal_token: str) -> bytes:
    """The 32-byte AES key inside a ``personal_token`` (standard base64)."""
    return _unb64(personal_token, "personal_token", KEY_LEN)


def canonical_aad(aad: Optional[Mapping[str, Any]]) -> bytes:
    """The associated data for ``aad``: empty for ``None``, else canonical JSON.

    Keys sorted by code point, no whitespace, non-ASCII not escaped, UTF-8.
    Values must be strings, integers or booleans (``ValueError`` otherwise).
    """
    if aad is None:
        return b""
    if not isinstance(aad, Mapping):
        raise ValueError("aad must be an object (a dict) or None")
    for k, v in aad.items():
        if not isinstance(k, str):
            raise ValueError("aad keys must be strings")
        if not isinstance(v, (str, int, bool)):  # bool is an int; floats, None, lists, dicts are not allowed
            raise ValueError(f"aad[{k!r}] must be a string, integer or boolean (got {type(v).__name__})")
    return json.dumps(dict(aad), separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def encrypt(key: bytes, type: str, payload: Any, aad: Optional[Mapping[str, Any]] = None, *,
            nonce: Optional[bytes] = None) -> Dict[str, Any]:
    """Encrypt ``{"type", "payload"}`` into a send body ``{"ciphertext", "nonce", "tag", "aad"?}``.

    A fresh random 12-byte nonce is used unless ``nonce`` is given. Only pass a
    nonce to reproduce test vectors: reusing a nonce under a key breaks AES-GCM.
    """
    if not isinstance(type, str) or not 1 <= len(type) <= 64:
        raise ValueError("type must be a string of 1 to 64 characters")
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    elif len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    plaintext = json.dumps({"type": type, "payload": payload}, separators=(",", ":"),
                           ensure_ascii=False, allow_nan=False).encode("utf-8")
    sealed = AESGCM(key).encrypt(nonce, plaintext, canonical_aad(aad))  # ciphertext || tag
    body: Dict[str, Any] = {"ciphertext": _b64(sealed[:-TAG_LEN]), "nonce": _b64(nonce), "tag": _b64(sealed[-TAG_LEN:])}
    if aad is not None:
        body["aad"] = dict(aad)
    return body


def decrypt(key: bytes, message: Mapping[str, Any]) -> Any:
    """Decrypt a message (or a format test vector) and return the parsed plaintext JSON.

    This checks only the AES-GCM tag over the canonical ``aad``. For delivered
    messages use ``PigeonholeClient.decrypt``, which also checks that the
    ``aad`` matches the envelope. Raises ``DecryptionError``.
    """
    message_id = message.get("id") if isinstance(message.get("id"), int) else None
    try:
        nonce = _unb64(message.get("nonce"), "nonce", NONCE_LEN)
        tag = _unb64(message.get("tag"), "tag", TAG_LEN)
        ciphertext = _unb64(message.get("ciphertext"), "ciphertext")
        associated = canonical_aad(message.get("aad"))
    except ValueError as e:
        raise DecryptionError(str(e), message_id) from e
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext + tag, associated)
    except InvalidTag as e:
        raise DecryptionError("authentication tag does not verify (wrong key or tampered message)", message_id) from e
    try:
        return json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DecryptionError("plaintext is not UTF-8 JSON", message_id) from e


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp such as ``2026-11-25T23:49:50.123Z`` (works on Python 3.9)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


# ---------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------

def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/api/v1`` -> ``http://host:port/api/v1``."""
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError("empty base URL")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def _origin(url: str) -> str:
    url = url.strip().rstrip("/")
    return url[: -len(API_PREFIX)] if url.endswith(API_PREFIX) else url


def _error_from(resp: requests.Response) -> ApiError:
    code, message = f"http_{resp.status_code}", (resp.text or resp.reason or "")[:300]
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    if resp.status_code == 429:
        return RateLimited(_retry_after(resp) or 1, message)
    if resp.status_code == 503:
        return Unavailable(_retry_after(resp), code, message)
    return ApiError(resp.status_code, code, message)


def _retry_after(resp: requests.Response) -> Optional[int]:
    """``Retry-After`` in whole seconds (at least 1); ``None`` if missing or garbled."""
    try:
        return max(1, int(str(resp.headers.get("Retry-After", "")).strip()))
    except ValueError:
        return None


def _json_body(resp: requests.Response) -> Dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(resp.status_code, "invalid_response", "the response body is not a JSON object")
    return body


def _insecure_host(url: str) -> bool:
    """True when ``url`` is plain http:// to a host that is not loopback."""
    try:
        check_transport(url)
    except InsecureTransportError:
        return True
    return False


def _credentials_body(resp: requests.Response, what: str) -> Dict[str, Any]:
    """``{"client_id", "api_token", "personal_token"}`` of a register or rotate answer, checked."""
    data = _json_body(resp)
    for k in ("client_id", "api_token", "personal_token"):
        if not isinstance(data.get(k), str) or not data[k]:
            raise ApiError(resp.status_code, "invalid_response", f"{what} response has no {k}")
    try:
        key_from_token(data["personal_token"])
    except ValueError as e:
        raise ApiError(resp.status_code, "invalid_response", f"{what} response: {e}") from None
    return data


def _request(session: requests.Session, method: str, url: str, timeout: float, **kwargs: Any) -> requests.Response:
    """One HTTP request; ``NetworkError`` if there is no response, ``ApiError`` for a status >= 400.

    A JSON body always goes with ``Content-Type: application/json`` (the server answers 415 otherwise).
    """
    headers = {"User-Agent": USER_AGENT, **kwargs.pop("headers", {})}
    if "json" in kwargs:
        headers["Content-Type"] = "application/json"
    try:
        resp = session.request(method, url, headers=headers, timeout=timeout, **kwargs)
    except requests.RequestException as e:
        raise NetworkError(f"{method} {url}: {e}") from e
    if resp.status_code >= 400:
        raise _error_from(resp)
    return resp


def _retryable(exc: Exception) -> bool:
    """No response, a 5xx or a 429: the same request may succeed later."""
    return isinstance(exc, NetworkError) or (isinstance(exc, ApiError) and (exc.status >= 500 or exc.status == 429))


#: Retry-After values longer than this end the retries of send and publish.
MAX_RETRY_AFTER = 60.0
#: The exponential backoff of send and publish retries never waits longer than this.
MAX_RETRY_DELAY = 10.0


def _retry_wait(exc: Exception, attempt: int, base_delay: float) -> Optional[float]:
    """Seconds to wait before retry ``attempt`` (1-based) after ``exc``; ``None``: don't retry.

    The server's ``Retry-After`` (429, 503) when it sent one, plus up to a quarter
    of it (at most 1 s) of jitter; else ``base_delay`` doubling per retry up to
    ``MAX_RETRY_DELAY``, with "equal jitter" (between half of it and all of it),
    so clients cut off by the same outage don't all come back at once.
    """
    if not _retryable(exc):
        return None
    retry_after: Optional[float] = getattr(exc, "retry_after", None)
    if retry_after is not None:
        if retry_after > MAX_RETRY_AFTER:
            return None
        return retry_after + random.uniform(0, min(retry_after / 4, 1.0))
    backoff = min(base_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY)
    return random.uniform(backoff / 2, backoff)


def _with_retries(call: Callable[[], Any], *, attempts: int, base_delay: float,
                  sleep: Callable[[float], Any], what: str, again: str) -> Any:
    """``call()``, retried after network errors, 5xx and 429 up to ``attempts`` tries in all.

    Only for requests that are safe to repeat as they are: send (same body,
    same nonce) and publish (same body, same ``Idempotency-Key``).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except (NetworkError, ApiError) as e:
            wait = _retry_wait(e, attempt, base_delay) if attempt < attempts else None
            if wait is None:
                raise
            log.warning("%s failed (%s); retrying %s in %.1f s (%d/%d)", what, e, again, wait,
                        attempt, attempts - 1)
            sleep(wait)


# ---------------------------------------------------------------------------
# Admin helper
# ---------------------------------------------------------------------------

MAX_IDEMPOTENCY_KEY_LEN = 255


def valid_idempotency_key(key: Any) -> bool:
    """The API's rule for ``Idempotency-Key``: 1-255 visible ASCII characters (0x21-0x7E)."""
    return isinstance(key, str) and 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LEN \
        and all(0x21 <= ord(c) <= 0x7E for c in key)


#: Placeholder for an argument that was not given (``None`` is a valid payload).
_MISSING: Any = object()

#: The API's limits of an audience and of ``ttl_secs``.
MAX_RECIPIENTS = 10000
MAX_AUDIENCE_TAGS = 10
MAX_TTL_SECS = 30 * 86400


def valid_tag(tag: Any) -> bool:
    """The API's rule for a tag: 1-64 characters of ``a-z 0-9 _ . -``."""
    return isinstance(tag, str) and 1 <= len(tag) <= 64 \
        and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_.-" for c in tag)


def publish_body(type: str, payload: Any, *, to_client_ids: Optional[Iterable[str]] = None,
                 to_tags: Optional[Iterable[str]] = None, to_all: bool = False,
                 ttl_secs: Optional[int] = None) -> Dict[str, Any]:
    """The body of ``POST /messages/publish`` for exactly one audience.

    ``to_client_ids`` (1-10000 ids), ``to_tags`` (1-10 tags: every client carrying any
    of them) or ``to_all=True`` (every client registered when the publish is accepted);
    naming none or several raises ``ValueError``, and so do an empty audience, a bad tag
    and a ``ttl_secs`` outside 1-2592000 (30 days). ``ttl_secs`` is left out when ``None``.
    """
    named = [name for name, given in (("to_client_ids", to_client_ids is not None),
                                      ("to_tags", to_tags is not None), ("to_all", bool(to_all)))
             if given]
    if len(named) != 1:
        raise ValueError("name exactly one audience: to_client_ids, to_tags or to_all=True"
                         + (f" (got {', '.join(named)})" if named else ""))
    if to_all is not False and to_all is not True:
        raise ValueError("to_all must be True or False")
    body: Dict[str, Any] = {}
    if to_client_ids is not None:
        if isinstance(to_client_ids, str):
            raise ValueError("to_client_ids must be a list of ids, not one string")
        ids = list(to_client_ids)
        if not 1 <= len(ids) <= MAX_RECIPIENTS:
            raise ValueError(f"to_client_ids must hold 1 to {MAX_RECIPIENTS} ids (got {len(ids)})")
        body["to_client_ids"] = ids
    elif to_tags is not None:
        if isinstance(to_tags, str):
            raise ValueError("to_tags must be a list of tags, not one string")
        tags = list(dict.fromkeys(to_tags))
        if not 1 <= len(tags) <= MAX_AUDIENCE_TAGS:
            raise ValueError(f"to_tags must hold 1 to {MAX_AUDIENCE_TAGS} tags (got {len(tags)})")
        bad = [t for t in tags if not valid_tag(t)]
        if bad:
            raise ValueError(f"to_tags: {bad[0]!r} is not a tag (1-64 characters of a-z 0-9 _ . -)")
        body["to_tags"] = tags
    else:
        body["to_all"] = True
    body["type"] = type
    body["payload"] = payload
    if ttl_secs is not None:
        if isinstance(ttl_secs, bool) or not isinstance(ttl_secs, int) or not 1 <= ttl_secs <= MAX_TTL_SECS:
            raise ValueError(f"ttl_secs must be an integer from 1 to {MAX_TTL_SECS} (got {ttl_secs!r})")
        body["ttl_secs"] = ttl_secs
    return body


def publish(base_url: str, admin_token: str, to_client_ids: Optional[Iterable[str]] = None,
            type: Optional[str] = None, payload: Any = _MISSING, *,
            to_tags: Optional[Iterable[str]] = None, to_all: bool = False, ttl_secs: Optional[int] = None,
            idempotency_key: Optional[str] = None, attempts: int = 5, retry_delay: float = 1.0,
            timeout: float = 30.0, session: Optional[requests.Session] = None,
            sleep: Callable[[float], Any] = time.sleep, insecure_http: bool = False) -> PublishResult:
    """Publish one message (admin; ``X-Admin-Token``) to exactly one audience.

    - ``to_client_ids``: a list of client ids, at most 10000 per request;
      duplicates are ignored and unknown ids skipped by the server.
    - ``to_tags``: every client carrying any of these tags (1-10).
    - ``to_all=True``: every client registered when the server accepts it.

    Naming none or several raises ``ValueError`` (see ``publish_body``), and so does
    a missing ``type`` or ``payload`` (``None`` is a valid payload: JSON ``null``).
    With ``ttl_secs`` (1-2592000) a recipient that has not acknowledged the message
    that long after the publish never receives it. The server encrypts the message
    for each recipient. ``PublishResult.recipients`` is the number of distinct ids
    for ``to_client_ids`` and ``None`` for the other two (the fan-out counts them;
    ``publish_status`` shows the count).

    The request carries an ``Idempotency-Key``: ``idempotency_key`` if given
    (1-255 visible ASCII characters, else ``ValueError``), or a fresh UUID,
    so each call is one logical publish. Network errors, 5xx and 429 are
    retried with the same key and body, up to ``attempts`` tries in all,
    waiting ``Retry-After`` when the server sends one (503 ``unavailable``),
    else ``retry_delay`` doubling, with jitter. The server answers a repeat
    with the original result, so every recipient gets the message once. To
    retry from another process, pass the same ``idempotency_key`` again (the
    server remembers it for 24 hours); the key is also on the result and on a
    raised error (``e.idempotency_key``). Reusing a key with a different body
    raises ``ApiError`` with code ``idempotency_key_reused``.

    Plain ``http://`` to a host that is not loopback raises ``InsecureTransportError``
    unless ``insecure_http``.
    """
    check_transport(base_url, insecure_http)
    if type is None:
        raise ValueError("publish needs a type (1-64 characters)")
    if payload is _MISSING:
        raise ValueError("publish needs a payload (any JSON value; None is JSON null)")
    body = publish_body(type, payload, to_client_ids=to_client_ids, to_tags=to_tags, to_all=to_all,
                        ttl_secs=ttl_secs)
    key = str(uuid.uuid4()) if idempotency_key is None else idempotency_key
    if not valid_idempotency_key(key):
        raise ValueError(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters "
                         "(0x21-0x7E, no spaces)")
    session = session or requests.Session()
    url = api_base(base_url) + "/messages/publish"

    def once() -> requests.Response:
        return _request(session, "POST", url, timeout,
                        headers={"X-Admin-Token": admin_token, "Idempotency-Key": key}, json=body)

    try:
        resp = _with_retries(once, attempts=max(1, attempts), base_delay=retry_delay, sleep=sleep,
                             what="publish", again="with the same Idempotency-Key")
    except PigeonholeError as e:
        e.idempotency_key = key  # type: ignore[attr-defined]
        raise
    data = _json_body(resp)
    recipients = data.get("recipients")
    return PublishResult(publish_id=str(data.get("publish_id")),
                         recipients=None if recipients is None else int(recipients),
                         idempotency_key=key)


def _publish_status(resp: requests.Response) -> PublishStatus:
    """A 200 of the status endpoint, checked for the fields every client relies on."""
    body = _json_body(resp)

    def count(name: str) -> int:
        value = body.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError(resp.status_code, "invalid_response", f"publish status: {name} is not a count")
        return value

    recipients = body.get("recipients")
    if recipients is not None:
        recipients = count("recipients")
    rows = body.get("recipient_status")
    parsed: Optional[List[RecipientStatus]] = None
    if rows is not None:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ApiError(resp.status_code, "invalid_response", "publish status: recipient_status is not a list")
        parsed = [RecipientStatus(client_id=str(r.get("client_id", "")), message_id=r.get("message_id"),
                                  status=str(r.get("status", ""))) for r in rows]
    audience = body.get("audience")
    return PublishStatus(
        publish_id=str(body.get("publish_id", "")), type=str(body.get("type", "")),
        created_at=str(body.get("created_at", "")), audience=audience if isinstance(audience, dict) else {},
        expires_at=body.get("expires_at"), recipients=recipients, delivered=count("delivered"),
        acknowledged=count("acknowledged"), expired=count("expired"), unknown=count("unknown"),
        pending=count("pending"), state=str(body.get("state", "")), recipient_status=parsed,
        next_page_token=body.get("next_page_token"))


def publish_status(base_url: str, admin_token: str, publish_id: str, *, recipients: bool = False,
                   limit: Optional[int] = None, page_token: Optional[str] = None, attempts: int = 5,
                   retry_delay: float = 1.0, timeout: float = 30.0, session: Optional[requests.Session] = None,
                   sleep: Callable[[float], Any] = time.sleep, insecure_http: bool = False) -> PublishStatus:
    """How far a publish got (admin; ``GET /messages/publish/{publish_id}``): a ``PublishStatus``.

    With ``recipients=True`` it also holds one page of ``recipient_status`` (``limit``
    1-1000, the server's default 100, from ``page_token``) and ``next_page_token``;
    ``iter_recipient_status`` walks every page. The status is kept 15 days: an unknown
    or older id raises ``ApiError`` 404 ``not_found``; a bad ``limit`` or
    ``page_token`` 422 ``validation_failed``.

    Reading changes nothing, so network errors, 5xx and 429 are retried like
    ``read_sent`` does (``attempts`` tries in all).
    """
    check_transport(base_url, insecure_http)
    session = session or requests.Session()
    url = f"{api_base(base_url)}/messages/publish/{quote(str(publish_id), safe='')}"
    params: Dict[str, Any] = {}
    if recipients:
        params["recipients"] = 1
        if limit is not None:
            params["limit"] = limit
        if page_token is not None:
            params["page_token"] = page_token

    def once() -> requests.Response:
        return _request(session, "GET", url, timeout, headers={"X-Admin-Token": admin_token}, params=params)

    resp = _with_retries(once, attempts=max(1, attempts), base_delay=retry_delay, sleep=sleep,
                         what="reading the publish status", again="the read")
    return _publish_status(resp)


def iter_recipient_status(base_url: str, admin_token: str, publish_id: str, *, limit: int = 1000,
                          attempts: int = 5, retry_delay: float = 1.0, timeout: float = 30.0,
                          session: Optional[requests.Session] = None, sleep: Callable[[float], Any] = time.sleep,
                          insecure_http: bool = False) -> Iterator[RecipientStatus]:
    """Every recipient of a publish with its status, walking all pages of ``limit`` (admin).

    While a tag or everyone audience is still being enumerated the server hands out a
    ``next_page_token`` even at the current end; when it hands back the same token with
    no recipients the walk ends there (more may follow later: call it again then).
    Errors are those of ``publish_status``.
    """
    session = session or requests.Session()
    token: Optional[str] = None
    while True:
        status = publish_status(base_url, admin_token, publish_id, recipients=True, limit=limit,
                                page_token=token, attempts=attempts, retry_delay=retry_delay, timeout=timeout,
                                session=session, sleep=sleep, insecure_http=insecure_http)
        rows = status.recipient_status or []
        nxt = status.next_page_token
        if token is not None and nxt == token and rows:
            raise ApiError(200, "invalid_response", "the server repeated a page token")
        yield from rows
        if not nxt or nxt == token:
            return
        token = nxt


def _sent_page(resp: requests.Response, after: int) -> SentPage:
    """A 200 of the sent endpoint, checked: at least one message, ids ascending and
    newer than ``after``, ``next_after`` the last id (else a reader could print a
    message twice or page for ever)."""
    body = _json_body(resp)

    def bad(what: str) -> ApiError:
        return ApiError(resp.status_code, "invalid_response", f"sent page after {after}: {what}")

    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("200 with no messages")
    messages: List[SentMessage] = []
    previous = after
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("id"), int) or isinstance(m.get("id"), bool):
            raise bad("a message without an integer id")
        if m["id"] <= previous:
            raise bad(f"id {m['id']} does not follow {previous}")
        previous = m["id"]
        messages.append(SentMessage(id=m["id"], type=str(m.get("type", "")), payload=m.get("payload"),
                                    aad=m.get("aad"), created_at=str(m.get("created_at", ""))))
    if body.get("next_after") != previous:
        raise bad(f"next_after {body.get('next_after')!r} is not the last id {previous}")
    return SentPage(messages=messages, next_after=previous)


def read_sent(base_url: str, admin_token: str, client_id: str, after: int = 0, limit: Optional[int] = None, *,
              attempts: int = 5, retry_delay: float = 1.0, timeout: float = 30.0,
              session: Optional[requests.Session] = None, sleep: Callable[[float], Any] = time.sleep,
              insecure_http: bool = False) -> SentPage:
    """One page of what a client sent (admin; ``GET /clients/{client_id}/sent``).

    Returns a ``SentPage``: the messages with an id above ``after``, oldest
    first, with ``type`` and ``payload`` in plaintext (the server decrypts
    them), and ``next_after`` to pass as ``after`` for the next page. When
    nothing is newer (204) the page is empty and ``next_after == after``. A
    page holds at most ``limit`` messages (1-500, the server's default 100)
    and may hold fewer (it is bounded by bytes too), so page until empty, or
    use ``iter_sent``.

    Reading changes nothing on the server, so network errors, 5xx and 429
    are retried, up to ``attempts`` tries in all, waiting ``Retry-After`` when
    the server sends one, else ``retry_delay`` doubling, with jitter (like
    ``publish``). An unknown client raises ``ApiError`` 404 ``not_found``; a
    wrong admin token 401 ``unauthorized``. Plain ``http://`` to a host that
    is not loopback raises ``InsecureTransportError`` unless ``insecure_http``.
    """
    check_transport(base_url, insecure_http)
    after = int(after)
    session = session or requests.Session()
    url = f"{api_base(base_url)}/clients/{quote(str(client_id), safe='')}/sent"
    params: Dict[str, Any] = {"after": after}
    if limit is not None:
        params["limit"] = limit

    def once() -> requests.Response:
        return _request(session, "GET", url, timeout, headers={"X-Admin-Token": admin_token}, params=params)

    resp = _with_retries(once, attempts=max(1, attempts), base_delay=retry_delay, sleep=sleep,
                         what="reading sent messages", again="the read")
    if resp.status_code == 204:
        return SentPage(messages=[], next_after=after)
    if resp.status_code != 200:
        raise ApiError(resp.status_code, "invalid_response",
                       f"status {resp.status_code} is not one this endpoint returns")
    return _sent_page(resp, after)


def iter_sent(base_url: str, admin_token: str, client_id: str, after: int = 0, limit: Optional[int] = None, *,
              follow: bool = False, stop: Optional[threading.Event] = None,
              sleep: Optional[Callable[[float], Any]] = None,
              on_wait: Optional[Callable[[float, str], Any]] = None,
              attempts: int = 5, retry_delay: float = 1.0, timeout: float = 30.0,
              session: Optional[requests.Session] = None, insecure_http: bool = False) -> Iterator[SentMessage]:
    """Every message a client sent after ``after``, oldest first, paging with
    ``read_sent`` until the server answers 204 (admin).

    With ``follow=True`` it then keeps polling for new messages on the
    short-poll schedule: 3 s, then 3 s more after each empty read up to 30 s,
    back to 3 s after messages. A 429, or a 503 with ``Retry-After``, waits
    ``max(Retry-After, delay)``; a network error or another 5xx is logged and
    backs off like an empty read; other errors (401, 404) are raised. It ends
    when ``stop`` (a ``threading.Event``) is set; ``sleep`` defaults to
    ``stop.wait``, so setting it from another thread ends a wait at once.
    ``on_wait(seconds, reason)`` is called before each wait, with reason
    ``"empty"``, ``"rate_limited"``, ``"unavailable"`` or ``"error"``.

    Without ``follow`` each page is retried as ``read_sent`` does
    (``attempts``); with it, the schedule above does the retrying.
    """
    stop = stop or threading.Event()
    sleeper = sleep or stop.wait
    session = session or requests.Session()
    delay = INITIAL_INTERVAL

    def wait(seconds: float, reason: str) -> None:
        if on_wait is not None:
            on_wait(seconds, reason)
        sleeper(seconds)

    while not stop.is_set():
        try:
            page = read_sent(base_url, admin_token, client_id, after, limit, attempts=1 if follow else attempts,
                             retry_delay=retry_delay, timeout=timeout, session=session, sleep=sleeper,
                             insecure_http=insecure_http)
        except (NetworkError, ApiError) as e:
            if not follow or not _retryable(e):
                raise
            retry_after = getattr(e, "retry_after", None)
            if retry_after is not None:
                reason = "rate_limited" if isinstance(e, RateLimited) else "unavailable"
                log.warning("reading sent messages: %s; retrying in %s s", e, max(retry_after, delay))
                wait(max(float(retry_after), delay), reason)
                continue
            log.warning("reading sent messages failed: %s; retrying in %.0f s", e, delay)
            wait_for, delay = delay, next_interval(delay, got_messages=False)
            wait(wait_for, "error")
            continue
        if not page.messages:
            if not follow:
                return
            wait_for, delay = delay, next_interval(delay, got_messages=False)
            wait(wait_for, "empty")
            continue
        for m in page.messages:
            yield m
        after = page.next_after
        # More may be waiting (a page is bounded by bytes too): read again at once.
        delay = next_interval(delay, got_messages=True)


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------

_DEFAULT_AAD: Any = object()  # sentinel: "aad = {"client_id": <own id>}"

MessageHandler = Callable[[Message], Any]


class PigeonholeClient:
    """A registered Pigeonhole client: poll, decrypt, ack, send and listen.

    Build it from ``register``'s result (``PigeonholeClient.from_credentials``)
    or from the four values directly. ``timeout`` applies to every request.
    ``sleep`` is used between send retries (inject a fake one in tests).
    Plain ``http://`` to a host that is not loopback raises
    ``InsecureTransportError`` unless ``insecure_http=True``.
    """

    def __init__(self, base_url: str, client_id: str, api_token: str, personal_token: str, *,
                 timeout: float = 10.0, session: Optional[requests.Session] = None,
                 send_attempts: int = 4, retry_delay: float = 1.0,
                 sleep: Callable[[float], Any] = time.sleep, insecure_http: bool = False) -> None:
        check_transport(base_url, insecure_http)
        self.insecure_http = insecure_http
        self.base_url = _origin(base_url)
        self.client_id = client_id
        self.api_token = api_token
        self._key = key_from_token(personal_token)
        self._personal_token = personal_token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.send_attempts = max(1, send_attempts)
        self.retry_delay = retry_delay
        self._sleep = sleep
        self._api = api_base(base_url)

    def __repr__(self) -> str:
        return f"PigeonholeClient(base_url={self.base_url!r}, client_id={self.client_id!r})"

    # -- construction ------------------------------------------------------

    @classmethod
    def register(cls, base_url: str, fingerprint: str, name: Optional[str] = None, *,
                 timeout: float = 10.0, session: Optional[requests.Session] = None,
                 insecure_http: bool = False, admin_token: Optional[str] = None) -> Credentials:
        """Register (``POST /clients/register``) and return the credentials.

        Idempotent per fingerprint: a known fingerprint returns the same
        credentials again (``created`` is False; ``name`` is not updated), or
        the current ones after a ``rotate``.
        Use a secret, high-entropy fingerprint, e.g. ``secrets.token_urlsafe(32)``.
        The server limits registrations per address (``RateLimited``); with
        ``admin_token`` (fleet provisioning) the limit does not apply.
        """
        check_transport(base_url, insecure_http)
        body: Dict[str, Any] = {"fingerprint": fingerprint}
        if name is not None:
            body["name"] = name
        headers = {"X-Admin-Token": admin_token} if admin_token else {}
        resp = _request(session or requests.Session(), "POST", api_base(base_url) + "/clients/register",
                        timeout, json=body, headers=headers)
        data = _credentials_body(resp, "register")
        return Credentials(base_url=_origin(base_url), client_id=data["client_id"], api_token=data["api_token"],
                           personal_token=data["personal_token"], fingerprint=fingerprint, name=name,
                           created=resp.status_code == 201,
                           insecure_http=insecure_http and _insecure_host(base_url))

    @classmethod
    def from_credentials(cls, credentials: Credentials, **kwargs: Any) -> "PigeonholeClient":
        """A client for ``credentials`` (keyword arguments go to the constructor).

        ``insecure_http`` defaults to the credentials' own (set when they were registered with it).
        """
        kwargs.setdefault("insecure_http", credentials.insecure_http)
        return cls(credentials.base_url, credentials.client_id, credentials.api_token,
                   credentials.personal_token, **kwargs)

    @property
    def credentials(self) -> Credentials:
        """This client's credentials (without fingerprint and name)."""
        return Credentials(self.base_url, self.client_id, self.api_token, self._personal_token,
                           insecure_http=self.insecure_http and _insecure_host(self.base_url))

    # -- credentials -----------------------------------------------------------

    def rotate(self, fingerprint: Optional[str] = None) -> Credentials:
        """Get a new ``api_token`` and personal key (``POST /clients/rotate``) and use them from now on.

        The old token is refused from the server's answer on. Messages not yet
        acknowledged are delivered readable with the new key, so nothing is
        lost. With ``fingerprint`` (8-256 characters) the fingerprint is
        replaced too: the old one no longer finds this client. Returns the new
        credentials (``fingerprint`` set only when it was replaced); save them,
        e.g. with ``save_credentials``.

        If the answer is lost (``NetworkError``, 5xx) the server may have
        rotated: if ``poll`` then raises 401, ``register`` with the (new)
        fingerprint returns the current credentials. Raises ``ApiError``
        (401, 422 ...), ``NetworkError``.
        """
        body: Dict[str, Any] = {} if fingerprint is None else {"fingerprint": fingerprint}
        resp = self._call("POST", "/clients/rotate", json=body)
        data = _credentials_body(resp, "rotate")
        if data["client_id"] != self.client_id:
            raise ApiError(resp.status_code, "invalid_response",
                           f"rotate answered for client {data['client_id']}, not {self.client_id}")
        self.api_token = data["api_token"]
        self._key = key_from_token(data["personal_token"])
        self._personal_token = data["personal_token"]
        return Credentials(self.base_url, self.client_id, self.api_token, self._personal_token,
                           fingerprint=fingerprint,
                           insecure_http=self.insecure_http and _insecure_host(self.base_url))

    # -- HTTP --------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": "Bearer " + self.api_token, "X-Client-Id": self.client_id}
        return _request(self.session, method, self._api + path, self.timeout, headers=headers, **kwargs)

    # -- receiving -----------------------------------------------------------

    def poll_raw(self, cursor: Optional[int] = None, limit: Optional[int] = None) -> Optional[Dict[str, Any]]:
        """``GET /messages/poll`` as delivered: ``{"messages", "next_cursor"}``, or ``None`` on 204.

        Nothing is decrypted or verified; see ``decrypt``. Without ``cursor``
        the server starts after your acknowledged cursor. ``messages`` may be
        empty (every message the page covered expired); acknowledge
        ``next_cursor`` all the same.
        Raises ``RateLimited`` (429), ``ApiError``, ``NetworkError``.
        """
        params: Dict[str, int] = {}
        if cursor is not None:
            params["cursor"] = int(cursor)
        if limit is not None:
            params["limit"] = int(limit)
        resp = self._call("GET", "/messages/poll", params=params)
        if resp.status_code == 204:
            return None
        body = _json_body(resp)
        if not isinstance(body.get("messages"), list):
            raise ApiError(resp.status_code, "invalid_response", "poll response has no messages list")
        next_cursor = body.get("next_cursor")
        if not isinstance(next_cursor, int) or isinstance(next_cursor, bool) or next_cursor < 0:
            raise ApiError(resp.status_code, "invalid_response", "poll response has no integer next_cursor")
        ids = [m.get("id") for m in body["messages"] if isinstance(m, dict)]
        if any(isinstance(i, int) and not isinstance(i, bool) and i > next_cursor for i in ids):
            raise ApiError(resp.status_code, "invalid_response", "poll response: next_cursor is below a message id")
        return body

    def poll(self, cursor: Optional[int] = None, limit: Optional[int] = None) -> Messages:
        """Poll once and return the verified, decrypted messages in ascending id order.

        The result is a ``Messages`` list whose ``next_cursor`` is what to
        acknowledge once you have processed them: ``ack(messages.next_cursor)``.
        It moves past expired ids too, so a page may even be empty with a
        ``next_cursor`` (every message it covered expired): ack it all the
        same. After a 204 (nothing new) the list is empty and ``next_cursor``
        is ``None``. Nothing is acknowledged here. Raises ``DecryptionError``
        if any message fails verification (use ``poll_raw`` + ``decrypt`` to
        handle messages one by one), ``RateLimited``, ``ApiError`` or
        ``NetworkError``.
        """
        body = self.poll_raw(cursor, limit)
        if body is None:
            return Messages()
        return Messages((self.decrypt(m) for m in body["messages"]), next_cursor=body["next_cursor"])

    def decrypt(self, message: Mapping[str, Any]) -> Message:
        """Verify and decrypt one delivered message (an item of ``poll_raw()["messages"]``).

        Checks that ``aad == {"client_id": <own id>, "created_at": <its created_at>,
        "id": <its id>}``, that the AES-GCM tag verifies over the canonical aad,
        and that the plaintext is ``{"type": str, "payload": ...}``.
        Raises ``DecryptionError`` otherwise (treat it as tampering).
        """
        mid = message.get("id")
        if not isinstance(mid, int) or isinstance(mid, bool):
            raise DecryptionError("envelope has no integer id")
        created_at = message.get("created_at")
        expected = {"client_id": self.client_id, "created_at": created_at, "id": mid}
        aad = message.get("aad")
        if not isinstance(created_at, str) or not isinstance(aad, dict) or aad != expected \
                or any(isinstance(v, bool) for v in aad.values()):
            raise DecryptionError("aad does not match the envelope (client_id, created_at, id)", mid)
        plain = decrypt(self._key, message)
        if not isinstance(plain, dict) or set(plain) != {"type", "payload"} or not isinstance(plain["type"], str):
            raise DecryptionError('plaintext is not {"type": ..., "payload": ...}', mid)
        return Message(id=mid, type=plain["type"], payload=plain["payload"], created_at=created_at, aad=dict(aad))

    def ack(self, last_id: int) -> int:
        """Acknowledge everything up to ``last_id`` (``POST /messages/ack``); returns the new cursor.

        The cursor never moves backwards: acking an older id returns the current one.
        """
        resp = self._call("POST", "/messages/ack", json={"last_received_id": int(last_id)})
        return int(_json_body(resp)["cursor"])

    # -- sending -------------------------------------------------------------

    def encrypt(self, type: str, payload: Any, aad: Any = _DEFAULT_AAD) -> Dict[str, Any]:
        """Build a send body under this client's key, with a fresh nonce.

        ``aad`` defaults to ``{"client_id": <own id>}``, which binds the
        ciphertext to this client; pass ``None`` for no AAD, or your own dict
        (string, integer and boolean values; a ``client_id`` must be your own).
        """
        if aad is _DEFAULT_AAD:
            aad = {"client_id": self.client_id}
        return encrypt(self._key, type, payload, aad)

    def send_body(self, body: Mapping[str, Any]) -> SendResult:
        """POST a body from ``encrypt`` to ``/messages/send``, retrying with the *same* body.

        Network errors, 5xx and 429 are retried up to ``send_attempts`` tries in
        all: after ``Retry-After`` when the server sends one (503
        ``unavailable``), else after ``retry_delay`` doubling, with jitter
        (between half and all of it). The server deduplicates by nonce, so a
        retry of a message it already stored returns 200 with the original id.
        """
        def once() -> requests.Response:
            return self._call("POST", "/messages/send", json=dict(body))

        resp = _with_retries(once, attempts=self.send_attempts, base_delay=self.retry_delay, sleep=self._sleep,
                             what="send", again="the same body")
        return SendResult(id=int(_json_body(resp)["id"]), status=resp.status_code)

    def send(self, type: str, payload: Any, aad: Any = _DEFAULT_AAD) -> SendResult:
        """Encrypt ``{"type", "payload"}`` with a fresh nonce and send it (``POST /messages/send``).

        ``aad`` defaults to ``{"client_id": <own id>}`` (see ``encrypt``).
        Retries safely on network errors and 5xx (see ``send_body``).
        """
        return self.send_body(self.encrypt(type, payload, aad))

    # -- the backoff loop ----------------------------------------------------

    def listen(self, handler: MessageHandler, *, stop: Optional[threading.Event] = None,
               max_polls: Optional[int] = None, sleep: Optional[Callable[[float], Any]] = None,
               limit: Optional[int] = None,
               on_wait: Optional[Callable[[float, str], Any]] = None,
               on_invalid: Optional[Callable[[Mapping[str, Any], DecryptionError], Any]] = None,
               jitter: Optional[Callable[[], float]] = None) -> ListenStats:
        """Poll with the documented backoff and call ``handler(message)`` for each message.

        - Start with a 3 s delay. After an empty poll wait the delay, then add
          3 s, up to 30 s (3, 6, 9 ... 30).
        - After messages: call ``handler`` for each, in order, then ack the
          page's ``next_cursor``, then reset the delay to 3 s. A full page
          (``limit`` messages) is followed by another poll at once.
        - A page with no messages (every message it covered expired) is
          acknowledged too (its ``next_cursor``), and followed by another
          poll at once: more may be waiting behind it.
        - Every wait is the delay multiplied by a random factor in [0.9, 1.1]
          (``jittered_interval``; ``jitter()`` is the uniform [0, 1) draw,
          ``random.random`` by default), so a fleet restarted together does
          not poll in lockstep.
        - On 429, and on a 503 (``unavailable``) with ``Retry-After``, wait
          ``max(Retry-After, jittered delay)`` without changing the delay (never
          earlier than the server asked); the cursor stays where it is.
        - On a network error or another 5xx, log it, wait the delay and grow it
          as for an empty poll; the loop keeps running.
        - A message that fails verification is passed to ``on_invalid`` (default:
          a logged warning), never to ``handler``; it is acknowledged with its
          batch so that it cannot block the queue.
        - If ``handler`` raises, the messages handled before it are acknowledged
          and the exception propagates. Other errors (401, 422) propagate too.

        The loop ends when ``stop`` is set or after ``max_polls`` polls (it does
        not wait after the last one). ``sleep(seconds)`` defaults to
        ``stop.wait``, so setting ``stop`` from another thread ends the wait at
        once. ``on_wait(seconds, reason)`` is called before each wait, with
        reason ``"empty"``, ``"messages"``, ``"rate_limited"``, ``"unavailable"``
        (a 503 with ``Retry-After``) or ``"error"``.
        Returns ``ListenStats``.
        """
        stop = stop or threading.Event()
        sleeper = sleep or stop.wait
        page = limit or DEFAULT_POLL_LIMIT
        stats = ListenStats()
        draw = jitter or random.random
        delay = INITIAL_INTERVAL
        cursor: Optional[int] = None  # None: start from the server's acknowledged cursor

        def wait(base: float, reason: str, floor: float = 0.0) -> None:
            seconds = max(floor, jittered_interval(base, draw()))
            stats.sleeps.append(seconds)
            if on_wait is not None:
                on_wait(seconds, reason)
            sleeper(seconds)

        while not stop.is_set() and (max_polls is None or stats.polls < max_polls):
            stats.polls += 1
            last = max_polls is not None and stats.polls >= max_polls
            try:
                body = self.poll_raw(cursor, limit)
            except RateLimited as e:
                stats.rate_limited += 1
                log.info("rate limited; retrying in %s s", max(e.retry_after, delay))
                if not last:
                    wait(delay, "rate_limited", floor=float(e.retry_after))
                continue
            except (NetworkError, ApiError) as e:
                if not _retryable(e):
                    raise
                stats.errors += 1
                if isinstance(e, Unavailable) and e.retry_after is not None:
                    # Storage was briefly unavailable: come back when the server says.
                    log.warning("server unavailable: %s; retrying in %s s", e, max(e.retry_after, delay))
                    if not last:
                        wait(delay, "unavailable", floor=float(e.retry_after))
                    continue
                log.warning("poll failed: %s; retrying in %.0f s", e, delay)
                wait_for, delay = delay, next_interval(delay, got_messages=False)
                if not last:
                    wait(wait_for, "error")
                continue

            moved = body is not None and (cursor is None or body["next_cursor"] > cursor)
            if body is None or (not body["messages"] and not moved):
                wait_for, delay = delay, next_interval(delay, got_messages=False)
                if not last:
                    wait(wait_for, "empty")
                continue

            raw_messages = body["messages"]
            handled_up_to: Optional[int] = None
            try:
                for raw in raw_messages:
                    try:
                        message = self.decrypt(raw)
                    except DecryptionError as e:
                        stats.invalid += 1
                        if on_invalid is not None:
                            on_invalid(raw, e)
                        else:
                            log.warning("dropping a message that failed verification: %s", e)
                    else:
                        handler(message)
                        stats.messages += 1
                    if isinstance(raw.get("id"), int):
                        handled_up_to = raw["id"]
                # Every message of the page is handled: move on to next_cursor,
                # which is past the expired ids it skipped.
                handled_up_to = body["next_cursor"]
            finally:
                if handled_up_to is not None:
                    cursor = handled_up_to if cursor is None else max(cursor, handled_up_to)
                    self._ack_quietly(cursor)
                    stats.cursor = cursor
            delay = next_interval(delay, got_messages=True)
            if len(raw_messages) >= page or not raw_messages:
                continue  # a full page, or expired ids only: more may be waiting, poll again at once
            if not last and not stop.is_set():
                wait(delay, "messages")
        return stats

    def _ack_quietly(self, cursor: int) -> None:
        """Ack in ``listen``: a network error or 5xx is logged; the next ack covers it."""
        try:
            self.ack(cursor)
        except (NetworkError, ApiError) as e:
            if not _retryable(e):
                raise
            log.warning("ack of %d failed: %s; the next ack will cover it", cursor, e)


#: ``register(base_url, fingerprint, name=None) -> Credentials`` as a plain function.
register = PigeonholeClient.register


# ---------------------------------------------------------------------------
# Credentials file
# ---------------------------------------------------------------------------

def default_credentials_path() -> str:
    """``$PIGEONHOLE_CREDENTIALS``, else ``$XDG_CONFIG_HOME/pigeonhole/python-client.json``
    (``~/.config/...``)."""
    explicit = os.environ.get("PIGEONHOLE_CREDENTIALS")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pigeonhole", "python-client.json")


def save_credentials(credentials: Credentials, path: str) -> str:
    """Write ``credentials`` as JSON to ``path`` with mode 0600, atomically; returns the path.

    The file is created with ``os.open(..., 0o600)`` (never world-readable, not
    even briefly) and then renamed over any existing file. A missing parent
    directory is created with mode 0700.
    """
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(credentials.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_credentials(path: str) -> Credentials:
    """Read credentials written by ``save_credentials`` (warns if others can read the file)."""
    path = os.path.expanduser(path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if os.name == "posix" and os.stat(path).st_mode & 0o077:
        log.warning("%s is readable by other users; run: chmod 600 %s", path, path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return Credentials.from_dict(data)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1          # the server refused the request (ApiError: 401, 422, 429 ...)
EXIT_USAGE = 2          # bad arguments, bad JSON, missing credentials file or token
EXIT_NO_MESSAGES = 3    # listen --once: the poll was empty
EXIT_NETWORK = 4        # no response from the server
EXIT_TAMPERED = 5       # a delivered message failed verification


class _UsageError(Exception):
    pass


class _Failed(Exception):
    """A command-line failure that is not a plain API error (exit 1)."""


def _random_fingerprint() -> str:
    """32 random bytes, base64url: a secret fingerprint."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _client_for(creds: Credentials, args: argparse.Namespace) -> "PigeonholeClient":
    return PigeonholeClient.from_credentials(creds, timeout=args.timeout,
                                             insecure_http=args.insecure_http or creds.insecure_http)


def _json_arg(text: str, what: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise _UsageError(f"{what} is not valid JSON: {e}") from e


def _load_cli_credentials(path: str) -> Credentials:
    try:
        return load_credentials(path)
    except FileNotFoundError:
        raise _UsageError(f"no credentials at {path}; run `register` first (or pass --credentials)") from None
    except (ValueError, OSError) as e:
        raise _UsageError(f"cannot read credentials {path}: {e}") from None


def _cmd_register(args: argparse.Namespace) -> int:
    path = args.credentials
    existing: Optional[Credentials] = None
    if os.path.exists(path):
        existing = _load_cli_credentials(path)
    fingerprint = args.fingerprint or (existing.fingerprint if existing else None)
    if existing is not None and not args.force and (
            fingerprint != existing.fingerprint or _origin(args.url) != existing.base_url):
        raise _UsageError(f"{path} already holds the credentials of client {existing.client_id}; "
                          "pass --force to replace them, or --credentials for another file")
    if existing is not None and existing.pending_fingerprint and not args.force:
        raise _UsageError(f"an earlier `rotate` of client {existing.client_id} got no answer; run `rotate` "
                          "first: it checks whether the server rotated and saves the credentials either way")
    if not fingerprint:
        fingerprint = _random_fingerprint()
    allowed = args.insecure_http or (existing is not None and existing.insecure_http
                                     and _origin(args.url) == existing.base_url)
    creds = PigeonholeClient.register(args.url, fingerprint, args.name, timeout=args.timeout,
                                      insecure_http=allowed)
    save_credentials(creds, path)
    state = "registered new client" if creds.created else "fingerprint already registered; same client"
    print(f"{state} {creds.client_id}", file=sys.stderr)
    print(f"credentials saved to {os.path.abspath(path)} (mode 0600)", file=sys.stderr)
    if args.print_credentials:
        print(json.dumps(creds.to_dict(), indent=2))
    else:
        print(creds.client_id)
    return EXIT_OK


def _outcome_unknown(exc: Exception) -> bool:
    """After a request that changes state: no answer, a 5xx, or an unreadable success."""
    if isinstance(exc, NetworkError):
        return True
    return isinstance(exc, ApiError) and (exc.status >= 500 or exc.code == "invalid_response")


def _settle(client: "PigeonholeClient", creds: Credentials, fingerprint: str,
            args: argparse.Namespace) -> Optional[Credentials]:
    """After a rotate whose answer was lost: ``None`` if the old token still works (nothing
    changed); else the new credentials, fetched by registering with ``fingerprint``."""
    try:
        client.poll_raw(limit=1)
        return None
    except ApiError as e:
        if e.status != 401:
            raise
    got = PigeonholeClient.register(creds.base_url, fingerprint, creds.name, timeout=args.timeout,
                                    insecure_http=client.insecure_http)
    if got.created or got.client_id != creds.client_id:
        raise _Failed(f"the old token is refused, but the fingerprint no longer finds client {creds.client_id} "
                      f"(it registered client {got.client_id} instead, not saved): was it deleted by an operator?")
    return got


def _cmd_rotate(args: argparse.Namespace) -> int:
    path = args.credentials
    creds = _load_cli_credentials(path)
    if args.fingerprint is not None and not 8 <= len(args.fingerprint) <= 256:
        raise _UsageError(f"--fingerprint must be 8 to 256 characters (got {len(args.fingerprint)})")
    client = _client_for(creds, args)

    def finish(fresh: Credentials, fingerprint: Optional[str], earlier: bool) -> int:
        final = replace(creds, api_token=fresh.api_token, personal_token=fresh.personal_token,
                        fingerprint=fingerprint, pending_fingerprint=None)
        try:
            save_credentials(final, path)
        except OSError as e:
            raise _Failed(f"the server rotated the credentials, but they cannot be saved ({e}); once {path} can "
                          "be written, run `rotate` again to fetch them") from None
        what = "completed an earlier rotation of" if earlier else "rotated the credentials of"
        print(f"{what} client {creds.client_id}: new api_token and personal key saved to "
              f"{os.path.abspath(path)} (mode 0600); the old token no longer works", file=sys.stderr)
        if fingerprint != creds.fingerprint:
            print("the fingerprint was replaced too; the old one no longer finds this client", file=sys.stderr)
        print(json.dumps(final.to_dict(), indent=2) if args.print_credentials else creds.client_id)
        return EXIT_OK

    # An earlier rotation that got no answer is finished first.
    if creds.pending_fingerprint:
        try:
            settled = _settle(client, creds, creds.pending_fingerprint, args)
        except (NetworkError, ApiError) as e:
            raise _Failed(f"an earlier rotate got no answer, and whether the server rotated cannot be checked "
                          f"now ({e}); run `rotate` again later") from None
        if settled is not None:
            return finish(settled, creds.pending_fingerprint, earlier=True)
        creds = replace(creds, pending_fingerprint=None)
        save_credentials(creds, path)

    new_fingerprint = args.fingerprint or (_random_fingerprint() if args.new_fingerprint else None)
    target = new_fingerprint or creds.fingerprint
    if target:
        # Saved before the request: a lost answer can then be recovered.
        save_credentials(replace(creds, pending_fingerprint=target), path)
    try:
        fresh = client.rotate(new_fingerprint)
    except (NetworkError, ApiError) as e:
        if not (_outcome_unknown(e) and target):
            save_credentials(creds, path)
            raise
        print(f"warning: rotate: {e}; checking whether the server rotated", file=sys.stderr)
        try:
            settled = _settle(client, creds, target, args)
        except (NetworkError, ApiError) as check:
            raise _Failed(f"rotate: {e}; whether the server rotated cannot be checked ({check}). The "
                          f"credentials file remembers this rotation: run `rotate` again to complete it") from None
        if settled is None:
            save_credentials(creds, path)
            raise _Failed(f"rotate: {e}; nothing was changed (the old credentials still work)") from None
        fresh = settled
    return finish(fresh, target, earlier=False)


def _print_message(m: Message, as_json: bool) -> None:
    if as_json:
        print(json.dumps(m.to_dict(), ensure_ascii=False), flush=True)
    else:
        payload = json.dumps(m.payload, ensure_ascii=False, indent=2)
        print(f"[{m.created_at}] #{m.id} {m.type}\n{payload}", flush=True)


def _cmd_listen(args: argparse.Namespace) -> int:
    client = _client_for(_load_cli_credentials(args.credentials), args)
    tty = sys.stderr.isatty() and not args.quiet
    invalid: List[DecryptionError] = []

    def on_invalid(raw: Mapping[str, Any], e: DecryptionError) -> None:
        invalid.append(e)
        print(f"warning: dropped a message that failed verification: {e}", file=sys.stderr)

    def handler(m: Message) -> None:
        if tty:
            sys.stderr.write("\r\x1b[K")
        _print_message(m, args.json)

    if args.once:
        stats = client.listen(handler, max_polls=1, limit=args.limit, on_invalid=on_invalid)
        if stats.errors:
            return EXIT_NETWORK
        if stats.rate_limited:
            print("rate limited: try again later", file=sys.stderr)
            return EXIT_ERROR
        if invalid:
            return EXIT_TAMPERED
        return EXIT_OK if stats.messages else EXIT_NO_MESSAGES

    def on_wait(seconds: float, reason: str) -> None:
        if tty:
            what = {"empty": "no new messages", "messages": "received", "rate_limited": "rate limited",
                    "unavailable": "server briefly unavailable",
                    "error": "server unreachable or failing"}.get(reason, reason)
            sys.stderr.write(f"\r\x1b[Knext poll in {seconds:.0f} s ({what})")
            sys.stderr.flush()

    stop = threading.Event()
    try:
        client.listen(handler, stop=stop, max_polls=args.max_polls, limit=args.limit,
                      on_wait=on_wait, on_invalid=on_invalid)
    except KeyboardInterrupt:
        stop.set()
        if tty:
            sys.stderr.write("\r\x1b[K")
        print("stopped", file=sys.stderr)
    return EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    client = _client_for(_load_cli_credentials(args.credentials), args)
    payload = _json_arg(args.payload, "--payload")
    if args.no_aad:
        aad: Any = None
    elif args.aad is not None:
        aad = _json_arg(args.aad, "--aad")
    else:
        aad = _DEFAULT_AAD
    try:
        result = client.send(args.type, payload, aad)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    print(json.dumps({"id": result.id, "status": result.status}))
    return EXIT_OK


def _read_ids(args: argparse.Namespace) -> List[str]:
    ids = list(args.to or [])
    if args.to_file:
        try:
            with (sys.stdin if args.to_file == "-" else open(args.to_file, encoding="utf-8")) as f:
                ids += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except OSError as e:
            raise _UsageError(f"cannot read {args.to_file}: {e}") from None
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise _UsageError("no recipients: pass --to ID... and/or --to-file FILE, --to-tag TAG... or --all")
    return unique


def _read_tags(args: argparse.Namespace) -> List[str]:
    """``--to-tag`` values (``a,b`` accepted too), checked and de-duplicated in order."""
    tags = list(dict.fromkeys(t.strip() for raw in args.to_tag for t in raw.split(",") if t.strip()))
    bad = [t for t in tags if not valid_tag(t)]
    if bad:
        raise _UsageError(f"--to-tag {_printable(bad[0])!r} is not a tag: 1 to 64 characters of a-z 0-9 _ . -")
    if not 1 <= len(tags) <= MAX_AUDIENCE_TAGS:
        raise _UsageError(f"--to-tag takes 1 to {MAX_AUDIENCE_TAGS} tags (got {len(tags)})")
    return tags


def _batch_keys(given: Optional[str], batches: int) -> List[Optional[str]]:
    """One Idempotency-Key per request: ``given`` for one batch, ``given-1``, ``given-2`` ...
    for several (so a rerun with the same key and list repeats the same keys);
    ``None`` (a fresh UUID each) without one."""
    if given is None:
        return [None] * batches
    keys: List[Optional[str]] = [given] if batches == 1 else [f"{given}-{n}" for n in range(1, batches + 1)]
    if not all(valid_idempotency_key(k) for k in keys):
        raise _UsageError(f"--idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters "
                          "(no spaces)" + (f", including the batch suffix -{batches}" if batches > 1 else ""))
    return keys


def _cmd_publish(args: argparse.Namespace) -> int:
    token = args.admin_token or os.environ.get("PIGEONHOLE_ADMIN_TOKEN")
    if not token:
        raise _UsageError("no admin token: pass --admin-token or set PIGEONHOLE_ADMIN_TOKEN")
    payload = _json_arg(args.payload, "--payload")
    if args.ttl is not None and not 1 <= args.ttl <= MAX_TTL_SECS:
        raise _UsageError(f"--ttl must be 1 to {MAX_TTL_SECS} seconds")
    named = [flag for flag, given in (("--to/--to-file", bool(args.to or args.to_file)),
                                      ("--to-tag", bool(args.to_tag)), ("--all", args.all)) if given]
    if len(named) > 1:
        raise _UsageError(f"give exactly one audience, not {' and '.join(named)}")
    audiences: List[Dict[str, Any]]
    if args.all:
        audiences = [{"to_all": True}]
    elif args.to_tag:
        audiences = [{"to_tags": _read_tags(args)}]
    else:
        ids = _read_ids(args)
        # At most 10000 recipients per request.
        audiences = [{"to_client_ids": ids[i:i + MAX_RECIPIENTS]} for i in range(0, len(ids), MAX_RECIPIENTS)]
    keys = _batch_keys(args.idempotency_key, len(audiences))
    session = requests.Session()
    for n, (audience, key) in enumerate(zip(audiences, keys)):
        try:
            result = publish(args.url, token, type=args.type, payload=payload, ttl_secs=args.ttl,
                             idempotency_key=key, attempts=args.retries + 1, timeout=args.timeout,
                             session=session, insecure_http=args.insecure_http, **audience)
        except (NetworkError, ApiError) as e:
            if n:
                print(f"note: {n} of {len(audiences)} batches were published before this error", file=sys.stderr)
            rerun = args.idempotency_key or (getattr(e, "idempotency_key", None) if len(audiences) == 1 else None)
            if _retryable(e) and rerun:
                print(f"note: to retry without publishing twice, rerun the same command with "
                      f"--idempotency-key {rerun}", file=sys.stderr)
            raise
        print(json.dumps({"publish_id": result.publish_id, "recipients": result.recipients}))
    return EXIT_OK


def _progress_line(status: PublishStatus) -> str:
    """``delivered 37/50 · acknowledged 12/50 · expired 0 · unknown 1 · pending 12`` (``?`` while the
    number of recipients is not known yet)."""
    of = "?" if status.recipients is None else str(status.recipients)
    return (f"delivered {status.delivered}/{of} · acknowledged {status.acknowledged}/{of} · "
            f"expired {status.expired} · unknown {status.unknown} · pending {status.pending}")


def _cmd_status(args: argparse.Namespace) -> int:
    token = args.admin_token or os.environ.get("PIGEONHOLE_ADMIN_TOKEN")
    if not token:
        raise _UsageError("no admin token: pass --admin-token or set PIGEONHOLE_ADMIN_TOKEN")
    try:
        publish_id = str(uuid.UUID(args.publish_id.strip()))
    except ValueError:
        raise _UsageError(f"{_printable(args.publish_id)!r} is not a publish id (a UUID)") from None
    check_transport(args.url, args.insecure_http)
    session = requests.Session()
    status = publish_status(args.url, token, publish_id, attempts=args.retries + 1, timeout=args.timeout,
                            session=session, insecure_http=args.insecure_http)
    rows: Optional[List[RecipientStatus]] = None
    if args.recipients:
        rows = list(iter_recipient_status(args.url, token, publish_id, attempts=args.retries + 1,
                                          timeout=args.timeout, session=session,
                                          insecure_http=args.insecure_http))
        status = replace(status, recipient_status=rows, next_page_token=None)
    if args.json:
        print(_json_line(status.to_dict()))
        return EXIT_OK
    audience = status.audience
    if "to_tags" in audience:
        who = "the clients tagged " + ", ".join(_printable(t) for t in audience["to_tags"])
    elif audience.get("to_all") is True:
        who = "every client"
    else:
        who = f"{_printable(audience.get('to_client_ids', '?'))} listed client ids"
    print(f"publish   {_printable(status.publish_id)}")
    print(f"type      {_printable(status.type)}")
    print(f"created   {_printable(status.created_at)}")
    print(f"audience  {who}")
    print(f"expires   {_printable(status.expires_at or 'never')}")
    print(f"state     {_printable(status.state)}")
    print(_progress_line(status))
    if rows is not None:
        print()
        table = [("CLIENT ID", "MESSAGE ID", "STATUS")] + [
            (_printable(r.client_id), "-" if r.message_id is None else _printable(r.message_id), _printable(r.status))
            for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return EXIT_OK


def _printable(text: Any) -> str:
    """``text`` with control and format characters (Unicode Cc, Cf: terminal escapes, bidi
    overrides, zero-width characters) shown escaped, so what a client sent cannot act on the terminal."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in ("Cc", "Cf") else c
                   for c in str(text))


def _json_line(value: Any) -> str:
    """Compact JSON on one line with every non-ASCII character escaped: the same value, and nothing
    in it (C1 controls, bidi overrides ...) reaches the terminal raw."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def _print_sent(m: SentMessage, as_json: bool) -> None:
    if as_json:
        print(_json_line(m.to_dict()), flush=True)
    else:
        payload = json.dumps(m.payload, ensure_ascii=False, separators=(",", ":"))
        print(f"[{_printable(m.created_at)}] #{m.id} {_printable(m.type)}: {_printable(payload)}", flush=True)


def _cmd_inbox(args: argparse.Namespace) -> int:
    token = args.admin_token or os.environ.get("PIGEONHOLE_ADMIN_TOKEN")
    if not token:
        raise _UsageError("no admin token: pass --admin-token or set PIGEONHOLE_ADMIN_TOKEN")
    try:
        client_id = str(uuid.UUID(args.client_id.strip()))
    except ValueError:
        raise _UsageError(f"{_printable(args.client_id)!r} is not a client id (a UUID)") from None
    if args.after < 0:
        raise _UsageError("--after must be 0 or more")
    if args.limit is not None and not 1 <= args.limit <= 500:
        raise _UsageError("--limit must be 1 to 500")
    check_transport(args.url, args.insecure_http)
    tty = sys.stderr.isatty()
    last = args.after

    def on_wait(seconds: float, reason: str) -> None:
        if tty:
            what = {"empty": "nothing new", "rate_limited": "rate limited",
                    "unavailable": "server briefly unavailable",
                    "error": "server unreachable or failing"}.get(reason, reason)
            sys.stderr.write(f"\r\x1b[Knext read in {seconds:.0f} s ({what}) · after {last}")
            sys.stderr.flush()

    stop = threading.Event()
    try:
        for m in iter_sent(args.url, token, client_id, args.after, args.limit, follow=args.follow, stop=stop,
                           on_wait=on_wait, attempts=args.retries + 1, timeout=args.timeout,
                           insecure_http=args.insecure_http):
            if tty and args.follow:
                sys.stderr.write("\r\x1b[K")
            _print_sent(m, args.json)
            last = m.id
    except KeyboardInterrupt:
        stop.set()
        if tty:
            sys.stderr.write("\r\x1b[K")
        print(f"stopped after id {last}; to go on from here: --after {last}", file=sys.stderr)
    except (NetworkError, ApiError):
        if last > args.after:
            print(f"note: read up to id {last}; rerun with --after {last} to go on from there", file=sys.stderr)
        raise
    return EXIT_OK


def _prog(file_name: str) -> str:
    """The command's name in usage lines: the console script (``pigeonhole-client``), the copied
    file (``pigeonhole_client.py``), or ``python -m pigeonhole_client`` for the installed package."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if invoked == "__main__.py":
        return f"python -m {__name__}"
    return invoked if invoked and invoked != "-c" else file_name


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of the command line."""
    env_url = os.environ.get("PIGEONHOLE_URL") or DEFAULT_URL
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--credentials", default=default_credentials_path(), metavar="PATH",
                        help="credentials file (default: $PIGEONHOLE_CREDENTIALS or %(default)s)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    common.add_argument("-v", "--verbose", action="store_true", help="log retries and backoff to stderr")
    common.add_argument("--insecure-http", action="store_true", default=_env_flag("PIGEONHOLE_INSECURE_HTTP"),
                        help="allow plain http:// to a host that is not loopback (tokens and keys then cross "
                             "the network unencrypted; default: $PIGEONHOLE_INSECURE_HTTP). A credentials file "
                             "registered with it remembers it for its URL")

    parser = argparse.ArgumentParser(
        prog=_prog("pigeonhole_client.py"),
        description="Pigeonhole reference client: register, listen, send, rotate, publish, status, inbox.",
        epilog="plain http:// is refused unless the host is loopback (localhost, 127.0.0.0/8, ::1) or "
               "--insecure-http is given. exit codes: 0 ok, 1 the server refused the request, 2 usage error, "
               "3 listen --once got no messages, 4 server unreachable, 5 a message failed verification",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("register", parents=[common], help="register and save the credentials (mode 0600)",
                       description="Register this client and save the credentials to a 0600 JSON file.",
                       epilog="example: pigeonhole_client.py register --url http://127.0.0.1:8080 --name laptop")
    p.add_argument("--url", default=env_url, help="server URL (default: $PIGEONHOLE_URL or %(default)s)")
    p.add_argument("--fingerprint", help="secret device fingerprint, 8-256 characters "
                   "(default: the one in the credentials file, else 32 random bytes)")
    p.add_argument("--name", help="display name, shown to operators")
    p.add_argument("--force", action="store_true", help="replace a credentials file of another client")
    p.add_argument("--print-credentials", action="store_true",
                   help="print the credentials (secrets!) as JSON instead of only the client id")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("listen", parents=[common], help="poll with backoff, print and ack messages",
                       description="Poll with the 3 s -> 30 s backoff; print each message, then ack it.",
                       epilog="example: pigeonhole_client.py listen --json")
    p.add_argument("--once", action="store_true", help="poll once and exit (exit 3 if there was nothing)")
    p.add_argument("--json", action="store_true", help="one JSON object per message and line")
    p.add_argument("--limit", type=int, help="messages per poll (1-500, server default 100)")
    p.add_argument("--max-polls", type=int, help="stop after this many polls")
    p.add_argument("-q", "--quiet", action="store_true", help="no status line on a terminal")
    p.set_defaults(func=_cmd_listen)

    p = sub.add_parser("send", parents=[common], help="encrypt and send a message to the server",
                       description="Encrypt {type, payload} with a fresh nonce and send it; retries are safe.",
                       epilog="""example: pigeonhole_client.py send --type status --payload '{"ok": true}'""")
    p.add_argument("--type", required=True, help="message type, 1-64 characters")
    p.add_argument("--payload", required=True, help="payload as JSON ('-' reads stdin)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--aad", help='aad object as JSON (default: {"client_id": <own id>})')
    group.add_argument("--no-aad", action="store_true", help="send without aad")
    p.set_defaults(func=_cmd_send)

    p = sub.add_parser("rotate", parents=[common], help="new api_token and personal key (old token dies)",
                       description="Trade the credentials for new ones: a new api_token and personal key "
                                   "(optionally a new fingerprint), saved to the credentials file. The old "
                                   "token is refused from then on; messages not yet acknowledged are delivered "
                                   "under the new key. If the answer is lost, rotate checks whether the server "
                                   "rotated and completes it (now, or on the next run).",
                       epilog="example: pigeonhole_client.py rotate --new-fingerprint")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fingerprint", help="also replace the fingerprint with this one (8-256 characters)")
    group.add_argument("--new-fingerprint", action="store_true",
                       help="also replace the fingerprint with 32 new random bytes")
    p.add_argument("--print-credentials", action="store_true",
                   help="print the new credentials (secrets!) as JSON instead of only the client id")
    p.set_defaults(func=_cmd_rotate)

    p = sub.add_parser("publish", parents=[common], help="admin: publish a message to clients",
                       description="Admin: publish one message to exactly one audience: the listed clients "
                                   "(--to and/or --to-file), the clients carrying any of some tags (--to-tag) or "
                                   "every client (--all). Prints {\"publish_id\", \"recipients\"} per publish "
                                   "(recipients is null for --to-tag and --all); `status PUBLISH_ID` follows it.",
                       epilog="""example: PIGEONHOLE_ADMIN_TOKEN=... pigeonhole_client.py publish """
                              """--to-tag eu --type alarm --payload '"door open"' --ttl 300""")
    p.add_argument("--url", default=env_url, help="server URL (default: $PIGEONHOLE_URL or %(default)s)")
    p.add_argument("--admin-token", help="admin token (default: $PIGEONHOLE_ADMIN_TOKEN)")
    p.add_argument("--to", nargs="+", metavar="ID", help="recipient client ids")
    p.add_argument("--to-file", metavar="FILE", help="file with one client id per line ('-' reads stdin)")
    p.add_argument("--to-tag", nargs="+", metavar="TAG", default=[],
                   help="instead: every client carrying any of these tags (1-10)")
    p.add_argument("--all", action="store_true",
                   help="instead: every client registered when the server accepts the publish")
    p.add_argument("--ttl", type=int, metavar="SECS",
                   help="seconds a recipient has to acknowledge the message before it expires (1-2592000)")
    p.add_argument("--type", required=True, help="message type, 1-64 characters")
    p.add_argument("--payload", required=True, help="payload as JSON ('-' reads stdin)")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="Idempotency-Key (1-255 visible ASCII characters; default: a fresh UUID). "
                        "Rerun with the same key to retry without publishing twice")
    p.add_argument("--retries", type=int, default=4, metavar="N",
                   help="retries after a network error, 5xx or 429, same key (default 4)")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("status", parents=[common], help="admin: how far a publish got",
                       description="Admin: the delivery status of a publish: delivered (acknowledged ones "
                                   "included), acknowledged, expired, unknown and pending recipients, and the "
                                   "state (queued, delivering, done); --recipients lists every recipient.",
                       epilog="example: PIGEONHOLE_ADMIN_TOKEN=... pigeonhole_client.py status "
                              "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b --recipients")
    p.add_argument("publish_id", metavar="PUBLISH_ID", help="the publish id (a UUID)")
    p.add_argument("--url", default=env_url, help="server URL (default: $PIGEONHOLE_URL or %(default)s)")
    p.add_argument("--admin-token", help="admin token (default: $PIGEONHOLE_ADMIN_TOKEN)")
    p.add_argument("--recipients", action="store_true", help="also list every recipient (all pages)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.add_argument("--retries", type=int, default=4, metavar="N",
                   help="retries of a read after a network error, 5xx or 429 (default 4)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("inbox", parents=[common], help="admin: read the messages a client sent",
                       description="Admin: print every message the client sent after --after N, oldest first, "
                                   "paging until nothing newer is left; with --follow keep polling for new ones "
                                   "(3 s -> 30 s backoff) until Ctrl-C. The server decrypts them. Nothing is "
                                   "acknowledged: pass the last id you read as --after next time.",
                       epilog="example: PIGEONHOLE_ADMIN_TOKEN=... pigeonhole_client.py inbox "
                              "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --after 41 --json")
    p.add_argument("client_id", metavar="CLIENT_ID", help="the client id (a UUID)")
    p.add_argument("--url", default=env_url, help="server URL (default: $PIGEONHOLE_URL or %(default)s)")
    p.add_argument("--admin-token", help="admin token (default: $PIGEONHOLE_ADMIN_TOKEN)")
    p.add_argument("--after", type=int, default=0, metavar="N", help="only messages with an id above N (default 0)")
    p.add_argument("-f", "--follow", action="store_true", help="after the last page, keep polling until Ctrl-C")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"id", "type", "payload", "aad", "created_at"}')
    p.add_argument("--limit", type=int, metavar="N", help="messages per request, 1-500 (server default 100)")
    p.add_argument("--retries", type=int, default=4, metavar="N",
                   help="retries of a read after a network error, 5xx or 429 without --follow (default 4)")
    p.set_defaults(func=_cmd_inbox)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except (_UsageError, InsecureTransportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except _Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except DecryptionError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_TAMPERED
    except NetworkError as e:
        print(f"error: server unreachable: {e}", file=sys.stderr)
        return EXIT_NETWORK
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
