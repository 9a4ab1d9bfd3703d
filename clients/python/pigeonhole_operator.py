#!/usr/bin/env python3
"""Pigeonhole operator tool: list clients with their status.

A single file; needs Python 3.9+ and ``pip install requests``. It follows
``next_page_token`` through every page of ``GET /api/v1/operators/clients``.

    export PIGEONHOLE_OPERATOR_TOKEN=...
    python pigeonhole_operator.py --url http://127.0.0.1:8080      # table
    python pigeonhole_operator.py --status online                  # only online clients
    python pigeonhole_operator.py --json                           # JSON array of all clients

Exit codes: 0 ok, 1 the server refused the request (e.g. 401 wrong token),
2 usage error (e.g. no token), 4 server unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone

import requests

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"
MAX_PAGE_SIZE = 1000

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NETWORK = 4


class OperatorError(Exception):
    """A failed request: ``status`` (None without a response), ``code`` and ``message``."""

    def __init__(self, status, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


def list_clients(base_url: str, operator_token: str, *, page_size: int | None = None,
                 timeout: float = 10.0, session=None) -> list:
    """Every client, following ``next_page_token`` through all pages (oldest first).

    Each item is ``{"id", "name", "created_at", "last_seen_at", "status"}``.
    Raises ``OperatorError``.
    """
    url = base_url.strip().rstrip("/")
    if not url.endswith(API_PREFIX):
        url += API_PREFIX
    url += "/operators/clients"
    session = session or requests.Session()
    headers = {"X-Operator-Token": operator_token, "User-Agent": f"pigeonhole-operator-python/{__version__}"}
    clients: list = []
    token = None
    seen_tokens = set()
    while True:
        params = {}
        if page_size is not None:
            params["limit"] = page_size
        if token is not None:
            params["page_token"] = token
        try:
            resp = session.get(url, headers=headers, params=params, timeout=timeout)
        except requests.RequestException as e:
            raise OperatorError(None, "network", f"GET {url}: {e}") from e
        if resp.status_code != 200:
            code, message = f"http_{resp.status_code}", resp.text[:300]
            try:
                err = resp.json()["error"]
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise OperatorError(resp.status_code, code, message)
        try:
            body = resp.json()
            page = body["clients"]
        except (ValueError, KeyError, TypeError):
            raise OperatorError(resp.status_code, "invalid_response", "the response has no clients list") from None
        clients.extend(page)
        token = body.get("next_page_token")
        if not token:
            return clients
        if token in seen_tokens:  # a server bug must not loop forever
            raise OperatorError(resp.status_code, "invalid_response", "next_page_token repeats")
        seen_tokens.add(token)


def relative_time(timestamp: str | None, now=None) -> str:
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


def format_table(clients: list, now=None) -> str:
    """An aligned text table: ID, NAME, STATUS, LAST SEEN."""
    rows = [("ID", "NAME", "STATUS", "LAST SEEN")]
    for c in clients:
        rows.append((str(c.get("id", "")), c.get("name") or "-", str(c.get("status", "")),
                     relative_time(c.get("last_seen_at"), now)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def build_parser():
    """The ``argparse`` parser."""
    parser = argparse.ArgumentParser(
        prog="pigeonhole_operator.py",
        description="List Pigeonhole clients with their status (online = seen in the last 120 s).",
        epilog="example: PIGEONHOLE_OPERATOR_TOKEN=... pigeonhole_operator.py --url http://127.0.0.1:8080 --status online\n"
               "exit codes: 0 ok, 1 the server refused the request, 2 usage error, 4 server unreachable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=os.environ.get("PIGEONHOLE_URL") or DEFAULT_URL,
                        help="server URL (default: $PIGEONHOLE_URL or %(default)s)")
    parser.add_argument("--operator-token", help="operator token (default: $PIGEONHOLE_OPERATOR_TOKEN)")
    parser.add_argument("--status", choices=["online", "offline"], help="only clients with this status")
    parser.add_argument("--json", action="store_true", help="print a JSON array of clients instead of a table")
    parser.add_argument("--page-size", type=int, metavar="N",
                        help=f"clients per request, 1-{MAX_PAGE_SIZE} (default: the server's, 100)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.operator_token or os.environ.get("PIGEONHOLE_OPERATOR_TOKEN")
    if not token:
        print("error: no operator token: pass --operator-token or set PIGEONHOLE_OPERATOR_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    if args.page_size is not None and not 1 <= args.page_size <= MAX_PAGE_SIZE:
        print(f"error: --page-size must be 1 to {MAX_PAGE_SIZE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        clients = list_clients(args.url, token, page_size=args.page_size, timeout=args.timeout)
    except OperatorError as e:
        if e.status is None:
            print(f"error: server unreachable: {e}", file=sys.stderr)
            return EXIT_NETWORK
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.status:
        clients = [c for c in clients if c.get("status") == args.status]
    if args.json:
        print(json.dumps(clients, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(format_table(clients))
    online = sum(1 for c in clients if c.get("status") == "online")
    noun = "client" if len(clients) == 1 else "clients"
    print(f"\n{len(clients)} {noun}: {online} online, {len(clients) - online} offline")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
