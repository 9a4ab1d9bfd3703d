#!/usr/bin/env python3
"""Pigeonhole operator tool: list clients with their status and tags, tag a client, delete a client.

Installed with ``pip install ./clients/python`` (the ``pigeonhole-operator``
command, ``py.typed``), or a single file to copy: Python 3.9+ and ``pip install
requests``. It follows ``next_page_token`` through every page of
``GET /api/v1/operators/clients``.

    export PIGEONHOLE_OPERATOR_TOKEN=...
    python pigeonhole_operator.py --url http://127.0.0.1:8080      # table
    python pigeonhole_operator.py --status online                  # only online clients
    python pigeonhole_operator.py --json                           # JSON array of all clients
    python pigeonhole_operator.py --tag eu                         # only clients tagged eu
    python pigeonhole_operator.py tag CLIENT_ID eu door-sensors    # replace its tags (none: clear)
    python pigeonhole_operator.py delete CLIENT_ID                 # asks first; --yes in scripts

Names (and every other value from the server) are printed with control and
format characters (Unicode Cc, Cf: terminal escapes, bidi overrides,
zero-width characters) escaped, so data can never act on the terminal.
Plain http:// is refused unless the host is loopback (localhost,
127.0.0.0/8, ::1) or --insecure-http is given: the operator token would
cross the network unencrypted.

Exit codes: 0 ok, 1 the server refused the request (e.g. 401 wrong token,
404 no such client) or the deletion was not confirmed, 2 usage error (e.g.
no token), 4 server unreachable.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import unicodedata
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Mapping, Set
from urllib.parse import quote, urlsplit

import requests

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"
MAX_PAGE_SIZE = 1000
#: Tags one client may carry, and the characters of a tag.
MAX_TAGS = 20
MAX_TAG_CHARS = 64
TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NETWORK = 4

#: One client as the listing returns it: ``{"id", "name", "created_at", "last_seen_at", "status",
#: "sent_head", "tags"}`` (a server may add fields).
ClientRecord = Dict[str, Any]


class OperatorError(Exception):
    """A failed request: ``status`` (None without a response), ``code`` and ``message``."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class InsecureTransportError(OperatorError):
    """Plain ``http://`` to a host that is not loopback, without ``insecure_http=True``; nothing was sent."""

    def __init__(self, url: str, host: str) -> None:
        super().__init__(None, "insecure_http", (
            f"refusing plain http:// to {host} ({url}): the operator token would cross the network unencrypted. "
            f"Use https://, or pass --insecure-http (insecure_http=True) if you trust every network between "
            f"here and {host}. Loopback (localhost, 127.0.0.0/8, ::1) is always allowed."))
        self.url = url
        self.host = host


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (brackets allowed)."""
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
    unless ``insecure_http``."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() == "http" and not insecure_http and not is_loopback_host(parts.hostname or ""):
        raise InsecureTransportError(url.strip(), parts.hostname or "")


def _unprintable(c: str) -> bool:
    """Unicode categories Cc (controls) and Cf (format: bidi overrides, zero-width characters, ...)."""
    return unicodedata.category(c) in ("Cc", "Cf")


def printable(text: object) -> str:
    """``text`` with every control or format character shown escaped (``\\x1b``, ``\\u202e``), so a
    value from the server can neither act on the terminal nor hide; the operator sees it was there."""
    return "".join(c.encode("unicode_escape").decode("ascii") if _unprintable(c) else c for c in str(text))


def json_for_terminal(text: str) -> str:
    """JSON text with the control and format characters ``json.dumps(ensure_ascii=False)`` leaves raw
    (DEL, C1 controls, Cf) written as ``\\uXXXX`` escapes: the same value, safe on a terminal."""
    out: List[str] = []
    for c in text:
        if c != "\n" and _unprintable(c):
            data = c.encode("utf-16-be")
            out.extend(f"\\u{int.from_bytes(data[i:i + 2], 'big'):04x}" for i in range(0, len(data), 2))
        else:
            out.append(c)
    return "".join(out)


def _api(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def _headers(operator_token: str) -> Dict[str, str]:
    return {"X-Operator-Token": operator_token, "User-Agent": f"pigeonhole-operator-python/{__version__}"}


def _error(resp: requests.Response) -> OperatorError:
    code, message = f"http_{resp.status_code}", resp.text[:300]
    try:
        err = resp.json()["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return OperatorError(resp.status_code, code, message)


def valid_tag(tag: object) -> bool:
    """The API's rule for a tag: 1-64 characters of ``a-z 0-9 _ . -``."""
    return isinstance(tag, str) and 1 <= len(tag) <= MAX_TAG_CHARS and all(c in TAG_CHARS for c in tag)


def set_tags(base_url: str, operator_token: str, client_id: str, tags: Iterable[str], *, timeout: float = 10.0,
             session: requests.Session | None = None, insecure_http: bool = False) -> List[str]:
    """Replace a client's tags (``PUT /api/v1/operators/clients/{client_id}/tags``).

    ``tags`` is any iterable of tags (0-20, each 1-64 characters of ``a-z 0-9 _ . -``;
    duplicates are folded); an empty one clears them. Returns the tags as the server
    stored them, sorted. A bad tag raises ``ValueError`` before anything is sent; an
    unknown or deleted client raises ``OperatorError`` with ``status`` 404 and ``code``
    ``"not_found"``. Tagged clients are what ``pigeonhole_client.publish(..., to_tags=[...])``
    reaches.
    """
    if isinstance(tags, str):
        raise ValueError("tags must be a list of tags, not one string")
    wanted = list(dict.fromkeys(tags))
    bad = [t for t in wanted if not valid_tag(t)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a tag: 1 to {MAX_TAG_CHARS} characters of a-z 0-9 _ . -")
    if len(wanted) > MAX_TAGS:
        raise ValueError(f"a client carries at most {MAX_TAGS} tags (got {len(wanted)})")
    check_transport(base_url, insecure_http)
    url = f"{_api(base_url)}/operators/clients/{quote(str(client_id), safe='')}/tags"
    session = session or requests.Session()
    try:
        resp = session.put(url, headers=_headers(operator_token), json={"tags": wanted}, timeout=timeout)
    except requests.RequestException as e:
        raise OperatorError(None, "network", f"PUT {url}: {e}") from e
    if resp.status_code != 200:
        raise _error(resp)
    try:
        stored = resp.json()["tags"]
    except (ValueError, KeyError, TypeError):
        raise OperatorError(resp.status_code, "invalid_response", "the response has no tags list") from None
    if not isinstance(stored, list):
        raise OperatorError(resp.status_code, "invalid_response", "the response has no tags list")
    return stored


def delete_client(base_url: str, operator_token: str, client_id: str, *, timeout: float = 10.0,
                  session: requests.Session | None = None, insecure_http: bool = False) -> None:
    """Delete a client (``DELETE /api/v1/operators/clients/{client_id}``).

    Its token is refused from then on, and its record, inbox, sent messages and
    fingerprint are removed. It cannot be undone. An unknown or already deleted
    id raises ``OperatorError`` with ``status`` 404 and ``code`` ``"not_found"``.
    """
    check_transport(base_url, insecure_http)
    url = f"{_api(base_url)}/operators/clients/{quote(str(client_id), safe='')}"
    session = session or requests.Session()
    try:
        resp = session.delete(url, headers=_headers(operator_token), timeout=timeout)
    except requests.RequestException as e:
        raise OperatorError(None, "network", f"DELETE {url}: {e}") from e
    if resp.status_code != 204:
        raise _error(resp)


def list_clients(base_url: str, operator_token: str, *, page_size: int | None = None,
                 timeout: float = 10.0, session: requests.Session | None = None, insecure_http: bool = False,
                 stop: Callable[[List[ClientRecord]], bool] | None = None,
                 tag: str | None = None) -> List[ClientRecord]:
    """Every client, following ``next_page_token`` through all pages (oldest first).

    Each item is ``{"id", "name", "created_at", "last_seen_at", "status", "sent_head", "tags"}``
    (``sent_head``: the client's newest sent id, 0 when none; read the messages with
    ``pigeonhole_client.iter_sent``; ``tags``: its tags, sorted). With ``tag``, only the
    clients carrying it (the server filters, ``?tag=``; a bad tag raises ``ValueError``).
    ``stop(page)``, if given, ends the walk early when it returns True.
    Raises ``OperatorError``.
    """
    if tag is not None and not valid_tag(tag):
        raise ValueError(f"{tag!r} is not a tag: 1 to {MAX_TAG_CHARS} characters of a-z 0-9 _ . -")
    check_transport(base_url, insecure_http)
    url = _api(base_url) + "/operators/clients"
    session = session or requests.Session()
    headers = _headers(operator_token)
    clients: List[ClientRecord] = []
    token: str | None = None
    seen_tokens: Set[str] = set()
    while True:
        params: Dict[str, Any] = {}
        if page_size is not None:
            params["limit"] = page_size
        if tag is not None:
            params["tag"] = tag
        if token is not None:
            params["page_token"] = token
        try:
            resp = session.get(url, headers=headers, params=params, timeout=timeout)
        except requests.RequestException as e:
            raise OperatorError(None, "network", f"GET {url}: {e}") from e
        if resp.status_code != 200:
            raise _error(resp)
        try:
            body = resp.json()
            page = body["clients"]
        except (ValueError, KeyError, TypeError):
            raise OperatorError(resp.status_code, "invalid_response", "the response has no clients list") from None
        clients.extend(page)
        token = body.get("next_page_token")
        if not token or (stop is not None and stop(page)):
            return clients
        if token in seen_tokens:  # a server bug must not loop forever
            raise OperatorError(resp.status_code, "invalid_response", "next_page_token repeats")
        seen_tokens.add(token)


def relative_time(timestamp: str | None, now: datetime | None = None) -> str:
    """``"never"``, ``"just now"``, ``"42 s ago"``, ``"2 min ago"``, ``"3 h ago"`` or ``"5 d ago"``."""
    if not timestamp:
        return "never"
    text = timestamp.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        then = datetime.fromisoformat(text)
    except ValueError:
        return timestamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def format_table(clients: Iterable[Mapping[str, Any]], now: datetime | None = None) -> str:
    """An aligned text table: ID, NAME, STATUS, SENT, LAST SEEN, TAGS. SENT is the client's newest sent
    id (``sent_head``; ``-`` from a server that does not report it); TAGS its tags, comma-separated
    (``-``: none). Control and format characters in the values (names above all: anyone could register
    one before names were validated) are escaped."""
    rows = [("ID", "NAME", "STATUS", "SENT", "LAST SEEN", "TAGS")]
    for c in clients:
        sent = c.get("sent_head")
        tags = c.get("tags") or []
        rows.append((printable(c.get("id", "")), printable(c.get("name") or "-"), printable(c.get("status", "")),
                     "-" if sent is None else printable(sent), printable(relative_time(c.get("last_seen_at"), now)),
                     printable(",".join(map(str, tags))) if tags else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _add_connection(p: argparse.ArgumentParser, suppress: bool) -> None:
    """--url, --operator-token, --timeout, --insecure-http. A subcommand's copy has no defaults, so it
    does not overwrite what was given before the subcommand."""
    d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    p.add_argument("--url", default=d(os.environ.get("PIGEONHOLE_URL") or DEFAULT_URL),
                   help="server URL (default: $PIGEONHOLE_URL or %s)" % DEFAULT_URL)
    p.add_argument("--operator-token", default=d(None), help="operator token (default: $PIGEONHOLE_OPERATOR_TOKEN)")
    p.add_argument("--timeout", type=float, default=d(10.0), help="seconds per request (default 10)")
    p.add_argument("--insecure-http", action="store_true", default=d(False),
                   help="allow plain http:// to a host that is not loopback (the token then crosses the "
                        "network unencrypted)")


def _add_listing(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    p.add_argument("--status", choices=["online", "offline"], default=d(None), help="only clients with this status")
    p.add_argument("--tag", metavar="TAG", default=d(None),
                   help="only clients carrying this tag (the server filters)")
    p.add_argument("--json", action="store_true", default=d(False),
                   help="print a JSON array of clients instead of a table")
    p.add_argument("--page-size", type=int, metavar="N", default=d(None),
                   help=f"clients per request, 1-{MAX_PAGE_SIZE} (default: the server's, 100)")


def _prog(file_name: str) -> str:
    """The command's name in usage lines: the console script (``pigeonhole-operator``), the copied
    file (``pigeonhole_operator.py``), or ``python -m pigeonhole_operator`` for the installed package."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if invoked == "__main__.py":
        return f"python -m {__name__}"
    return invoked if invoked and invoked != "-c" else file_name


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser: list (the default), ``tag ID [TAG ...]`` or ``delete ID``."""
    parser = argparse.ArgumentParser(
        prog=_prog("pigeonhole_operator.py"),
        description="List Pigeonhole clients with their status (online = seen in the last 120 s) and "
                    "tags, tag one, or delete one.",
        epilog="examples:\n"
               "  PIGEONHOLE_OPERATOR_TOKEN=... pigeonhole_operator.py --url http://127.0.0.1:8080 --status online\n"
               "  pigeonhole_operator.py --tag eu --json\n"
               "  pigeonhole_operator.py tag 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 eu door-sensors\n"
               "  pigeonhole_operator.py delete 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --yes\n"
               "plain http:// is refused unless the host is loopback or --insecure-http is given.\n"
               "exit codes: 0 ok, 1 the server refused the request (or a deletion was not confirmed), "
               "2 usage error, 4 server unreachable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(parser, suppress=False)
    _add_listing(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = sub.add_parser("list", help="list the clients (the default)",
                             description="List the clients with their status.")
    _add_connection(listing, suppress=True)
    _add_listing(listing, suppress=True)
    tag = sub.add_parser(
        "tag", help="replace a client's tags (none: clear them)",
        description="Replace a client's tags with the ones given (0-20, each 1-64 characters of "
                    "a-z 0-9 _ . -; duplicates folded) and print the set the server stored. Publishes "
                    "to a tag (pigeonhole_client.py publish --to-tag TAG) reach the clients carrying it.",
        epilog="example: pigeonhole_operator.py tag 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 eu door-sensors")
    tag.add_argument("client_id", metavar="CLIENT_ID", help="the client id (a UUID)")
    tag.add_argument("tags", metavar="TAG", nargs="*", help="the new tags; none clears them")
    tag.add_argument("--json", action="store_true", help='print {"id", "tags"} as JSON')
    _add_connection(tag, suppress=True)
    delete = sub.add_parser(
        "delete", help="delete a client: revoke its token, remove its data",
        description="Delete a client: its token is refused from then on, and its record, inbox, sent "
                    "messages and fingerprint are removed. It cannot be undone. On a terminal it names the "
                    "client and asks first; without one it needs --yes.",
        epilog="example: pigeonhole_operator.py delete 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --yes")
    delete.add_argument("client_id", metavar="CLIENT_ID", help="the client id (a UUID)")
    delete.add_argument("-y", "--yes", action="store_true", help="delete without asking")
    _add_connection(delete, suppress=True)
    return parser


def _find(clients_or_page: Iterable[ClientRecord], client_id: str) -> ClientRecord | None:
    return next((c for c in clients_or_page if str(c.get("id", "")).lower() == client_id), None)


def delete_question(client_id: str, client: Mapping[str, Any] | None, now: datetime | None = None) -> str:
    """The confirmation question, naming the client (escaped for the terminal)."""
    if client is None:
        who = f"client {printable(client_id)} (not in the listing)"
    else:
        name = f'"{printable(client["name"])}"' if client.get("name") else "(no name)"
        who = (f"client {printable(client_id)} {name} ({printable(client.get('status', ''))}, "
               f"last seen {printable(relative_time(client.get('last_seen_at'), now))})")
    return (f"Delete {who}? Its token stops working and its messages and fingerprint are removed; "
            "this cannot be undone. [y/N] ")


def _delete(args: argparse.Namespace, token: str) -> int:
    try:
        client_id = str(uuid.UUID(args.client_id.strip()))
    except ValueError:
        print(f"error: {printable(args.client_id)!r} is not a client id (a UUID)", file=sys.stderr)
        return EXIT_USAGE
    check_transport(args.url, args.insecure_http)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: refusing to delete client {client_id} without confirmation: stdin is not a "
                  "terminal, so nobody can be asked; pass --yes to delete it", file=sys.stderr)
            return EXIT_USAGE
        found: List[ClientRecord] = []

        def stop(page: List[ClientRecord]) -> bool:  # walk the pages only until the client shows up
            client = _find(page, client_id)
            if client is not None:
                found.append(client)
            return client is not None

        list_clients(args.url, token, timeout=args.timeout, insecure_http=args.insecure_http, stop=stop)
        client = found[0] if found else None
        sys.stderr.write(delete_question(client_id, client))
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if answer.strip().lower() not in ("y", "yes"):
            print(f"not deleted: client {client_id} is unchanged", file=sys.stderr)
            return EXIT_ERROR
    delete_client(args.url, token, client_id, timeout=args.timeout, insecure_http=args.insecure_http)
    print(f"deleted client {client_id}")
    return EXIT_OK


def main(argv: List[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.operator_token or os.environ.get("PIGEONHOLE_OPERATOR_TOKEN")
    if not token:
        print("error: no operator token: pass --operator-token or set PIGEONHOLE_OPERATOR_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "delete":
            return _delete(args, token)
        if args.command == "tag":
            return _tag(args, token)
        return _list(args, token)
    except InsecureTransportError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except OperatorError as e:
        if e.status is None:
            print(f"error: server unreachable: {e}", file=sys.stderr)
            return EXIT_NETWORK
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


def _tag(args: argparse.Namespace, token: str) -> int:
    try:
        client_id = str(uuid.UUID(args.client_id.strip()))
    except ValueError:
        print(f"error: {printable(args.client_id)!r} is not a client id (a UUID)", file=sys.stderr)
        return EXIT_USAGE
    tags = [t.strip() for raw in args.tags for t in raw.split(",") if t.strip()]
    try:
        stored = set_tags(args.url, token, client_id, tags, timeout=args.timeout, insecure_http=args.insecure_http)
    except ValueError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json_for_terminal(json.dumps({"id": client_id, "tags": stored}, ensure_ascii=False)))
    elif stored:
        print(f"client {client_id} tags: {printable(', '.join(map(str, stored)))}")
    else:
        print(f"client {client_id} has no tags")
    return EXIT_OK


def _list(args: argparse.Namespace, token: str) -> int:
    if args.page_size is not None and not 1 <= args.page_size <= MAX_PAGE_SIZE:
        print(f"error: --page-size must be 1 to {MAX_PAGE_SIZE}", file=sys.stderr)
        return EXIT_USAGE
    if args.tag is not None and not valid_tag(args.tag):
        print(f"error: --tag {printable(args.tag)!r} is not a tag: 1 to {MAX_TAG_CHARS} characters of "
              "a-z 0-9 _ . -", file=sys.stderr)
        return EXIT_USAGE
    clients = list_clients(args.url, token, page_size=args.page_size, timeout=args.timeout,
                           insecure_http=args.insecure_http, tag=args.tag)
    if args.status:
        clients = [c for c in clients if c.get("status") == args.status]
    if args.json:
        print(json_for_terminal(json.dumps(clients, indent=2, ensure_ascii=False)))
        return EXIT_OK
    print(format_table(clients))
    online = sum(1 for c in clients if c.get("status") == "online")
    noun = "client" if len(clients) == 1 else "clients"
    print(f"\n{len(clients)} {noun}: {online} online, {len(clients) - online} offline")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
