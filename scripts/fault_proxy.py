#!/usr/bin/env python3
"""A seeded, fault-injecting HTTP proxy in front of a DynamoDB/SQS emulator.

Usage:
    fault_proxy.py --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:0]
                   [--rate 0.2] [--seed N] [--port-file F]
                   [--throttle 40] [--conflict 25] [--server-error 15] [--lost 20]
                   [--ops OP,...] [--exclude-ops OP,...] [--exit-on-stdin-eof] [-v]

Emulators (moto, DynamoDB Local, LocalStack) never throttle, never cancel a
transaction for a conflict and never lose a response. Real DynamoDB and SQS
do all three. This proxy forwards every request to the emulator and, for a
share `--rate` of the requests to data operations, answers instead the way
the real service fails:

- throttle: DynamoDB `ThrottlingException` or
  `ProvisionedThroughputExceededException` (400); SQS `RequestThrottled` or
  `ThrottlingException` (400, with SQS's `x-amzn-query-error` header).
- conflict (DynamoDB writes only): `TransactWriteItems` gets a
  `TransactionCanceledException` (400) whose `CancellationReasons` has one
  entry per item of the request's `TransactItems`, one of them
  `TransactionConflict` (or `ThrottlingError`) and the others `None`;
  `PutItem`, `UpdateItem` and `DeleteItem` get a
  `TransactionConflictException` (400).
- server_error: 500 `InternalServerError` (DynamoDB) / `InternalError`
  (SQS), one time in four a 503 `ServiceUnavailable` instead.
- lost: the request IS forwarded (a write happens), then the client gets a
  500 `InternalServerError`/`InternalError`, or half of the time the
  connection is closed without any answer. The client has to retry a write
  that actually committed.

None of the first three reach the emulator. `--throttle`, `--conflict`,
`--server-error` and `--lost` are the relative weights of the kinds among
injected faults (default 40/25/15/20); a kind that cannot apply to an
operation (a conflict on a read) gives its share to the others.

Only requests of the AWS JSON 1.0 protocol whose `X-Amz-Target` is in the
allow-list can fail: by default every DynamoDB and SQS data operation
(`DATA_OPS` below), never the set-up calls (CreateTable, DescribeTable,
UpdateTimeToLive, CreateQueue, GetQueueUrl, Get/SetQueueAttributes, ...).
`--ops` replaces the list and `--exclude-ops` removes from it (names with
or without the `DynamoDB_20120810.`/`AmazonSQS.` prefix). Anything else,
such as moto's `/moto-api/...`, passes through untouched.

The error responses are what the services send on the JSON protocol and
what the AWS SDKs parse: the HTTP status, `Content-Type:
application/x-amz-json-1.0`, `x-amzn-RequestId`, `x-amzn-ErrorType` (read
first by the Rust SDK), a body `{"__type": "<namespace>#<Code>",
"message": ...}` (read by botocore and, without the header, by the Rust
SDK), for SQS `x-amzn-query-error: <Code>;Sender|Receiver` (the awsQuery
compatible code, which wins in both SDKs), and for DynamoDB a correct
`x-amz-crc32` (botocore checks it).

Control endpoints (answered by the proxy itself):
    GET  /_fault_proxy/stats   counts per fault kind, per error code and per
                               operation, the seed, the rate and the weights
    POST /_fault_proxy/rate    {"rate": 0.0} changes the rate at run time
                               (e.g. off for a test's final verification)

Once listening it prints `listening on http://HOST:PORT seed=N` on stdout
(and writes PORT to `--port-file`, if given). Without `--seed` it picks a
seed and prints it, so a failing run can be replayed with `--seed N`. Every
decision is drawn from one `random.Random(seed)` in the order requests
arrive: the replay is exact when the requests come in the same order (one
client, one request at a time), and only approximate when several
connections race, as they do under the AWS SDK (the same seed then gives
the same sequence of decisions, handed to requests in a possibly
different order).

Requests are buffered (Content-Length; a chunked request body is
re-framed with a Content-Length), all request headers are forwarded as
they came except hop-by-hop ones (the SigV4 signature covers Host, which
is kept), and each client connection is served by its own thread with its
own keep-alive connection to the upstream.

Standard library only.
"""

import argparse
import http.client
import json
import os
import random
import secrets
import socket
import sys
import threading
import urllib.parse
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DDB_PREFIX = "DynamoDB_20120810."
SQS_PREFIX = "AmazonSQS."
DDB_NAMESPACE = "com.amazonaws.dynamodb.v20120810#"
SQS_NAMESPACE = "com.amazonaws.sqs#"
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

DDB_DATA_OPS = (
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "BatchWriteItem",
    "TransactGetItems",
    "TransactWriteItems",
    "ExecuteStatement",
    "BatchExecuteStatement",
    "ExecuteTransaction",
)
SQS_DATA_OPS = (
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
)
DATA_OPS = tuple(DDB_PREFIX + op for op in DDB_DATA_OPS) + tuple(
    SQS_PREFIX + op for op in SQS_DATA_OPS
)
# The DynamoDB writes that can meet a transaction conflict.
DDB_CONFLICT_OPS = frozenset(
    DDB_PREFIX + op for op in ("TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem")
)

KINDS = ("throttle", "conflict", "server_error", "lost")
DEFAULT_WEIGHTS = {"throttle": 40, "conflict": 25, "server_error": 15, "lost": 20}

CONTROL_PREFIX = "/_fault_proxy/"
# Never forwarded: they describe one hop, not the request.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    )
)

# What the services say, per error code: (status, message).
DDB_ERRORS = {
    "ThrottlingException": (400, "Rate of requests exceeds the allowed throughput."),
    "ProvisionedThroughputExceededException": (
        400,
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    "TransactionConflictException": (400, "Transaction is ongoing for the item"),
    "InternalServerError": (500, "Internal server error"),
    "ServiceUnavailable": (503, "Service unavailable"),
}
SQS_ERRORS = {
    # (status, message, query-compatible fault)
    "RequestThrottled": (400, "Request is throttled.", "Sender"),
    "ThrottlingException": (400, "Rate exceeded", "Sender"),
    "InternalError": (
        500,
        "We encountered an internal error. Please try again.",
        "Receiver",
    ),
    "ServiceUnavailable": (
        503,
        "The request has failed due to a temporary failure of the server.",
        "Receiver",
    ),
}
CANCELLATION_MESSAGES = {
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": (
        "Throughput exceeds the current capacity of your table or index. DynamoDB is "
        "automatically scaling your table or index so please try again shortly."
    ),
    "ProvisionedThroughputExceeded": (
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API"
    ),
}


def qualify(name):
    """`PutItem` -> `DynamoDB_20120810.PutItem`; full targets unchanged."""
    name = name.strip()
    if "." in name:
        return name
    if name in DDB_DATA_OPS:
        return DDB_PREFIX + name
    if name in SQS_DATA_OPS:
        return SQS_PREFIX + name
    raise SystemExit(
        f"unknown operation {name!r}: give it as DynamoDB_20120810.<Op> or AmazonSQS.<Op>"
    )


class Fault:
    """One decision: a kind, and two draws that pick its variant."""

    __slots__ = ("kind", "variant", "index")

    def __init__(self, kind, variant, index):
        self.kind = kind
        self.variant = variant
        self.index = index


class Injector:
    """The seeded decisions and the counts, shared by every thread."""

    def __init__(self, seed, rate, weights, ops):
        self.seed = seed
        self.rate = rate
        self.weights = weights
        self.ops = frozenset(ops)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.passthrough = 0
        self.eligible = 0
        self.faults = {k: 0 for k in KINDS}
        self.errors = {}
        self.dropped = 0
        self.upstream_failures = 0
        self.by_operation = {}

    def decide(self, target):
        """Whether and how the request to `target` (None: not JSON) fails."""
        with self.lock:
            self.requests += 1
            if target is None or target not in self.ops:
                self.passthrough += 1
                if target is not None:
                    self._op(target)["requests"] += 1
                return None
            self.eligible += 1
            self._op(target)["requests"] += 1
            if self.rate <= 0 or self.rng.random() >= self.rate:
                return None
            # Always three draws per fault, so the sequence of decisions only
            # depends on the order of the requests.
            pick, variant, index = (self.rng.random() for _ in range(3))
            kinds = [
                (k, w)
                for k, w in self.weights.items()
                if w > 0 and (k != "conflict" or target in DDB_CONFLICT_OPS)
            ]
            total = sum(w for _, w in kinds)
            if total <= 0:
                return None
            x = pick * total
            for kind, w in kinds:
                if x < w:
                    break
                x -= w
            return Fault(kind, variant, index)

    def _op(self, target):
        entry = self.by_operation.get(target)
        if entry is None:
            entry = {"requests": 0}
            entry.update({k: 0 for k in KINDS})
            self.by_operation[target] = entry
        return entry

    def count(self, target, kind, code):
        with self.lock:
            self.faults[kind] += 1
            self._op(target)[kind] += 1
            key = f"{kind}: {code}"
            self.errors[key] = self.errors.get(key, 0) + 1

    def count_drop(self):
        with self.lock:
            self.dropped += 1

    def count_upstream_failure(self):
        with self.lock:
            self.upstream_failures += 1

    def set_rate(self, rate):
        with self.lock:
            self.rate = rate

    def stats(self):
        with self.lock:
            return {
                "seed": self.seed,
                "rate": self.rate,
                "weights": dict(self.weights),
                "requests": self.requests,
                "passthrough": self.passthrough,
                "eligible": self.eligible,
                "faults": dict(self.faults),
                "total_faults": sum(self.faults.values()),
                "errors": dict(sorted(self.errors.items())),
                "dropped_connections": self.dropped,
                "upstream_failures": self.upstream_failures,
                "by_operation": {
                    op: dict(v) for op, v in sorted(self.by_operation.items())
                },
            }


def error_response(target, code, extra=None, message=None):
    """(status, headers, body) of the error `code` as the service sends it."""
    request_id = str(uuid.uuid4())
    if target.startswith(SQS_PREFIX):
        status, default_message, fault = SQS_ERRORS[code]
        doc = {"__type": SQS_NAMESPACE + code, "message": message or default_message}
        headers = [("x-amzn-query-error", f"{code};{fault}")]
    else:
        status, default_message = DDB_ERRORS.get(code, (400, ""))
        doc = {"__type": DDB_NAMESPACE + code, "message": message or default_message}
        headers = []
    if extra:
        doc.update(extra)
    body = json.dumps(doc, separators=(",", ":")).encode()
    headers = [
        ("x-amzn-RequestId", request_id),
        ("x-amzn-ErrorType", code),
        ("Content-Type", JSON_CONTENT_TYPE),
    ] + headers
    if target.startswith(DDB_PREFIX):
        headers.append(("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF)))
    return status, headers, body


def transaction_items(body):
    """How many entries `TransactItems` of a TransactWriteItems body has."""
    try:
        items = json.loads(body or b"{}").get("TransactItems")
    except (ValueError, AttributeError):
        return 1
    return len(items) if isinstance(items, list) and items else 1


def canned_fault(target, fault, body):
    """(code, (status, headers, body)) for a fault that is not forwarded."""
    sqs = target.startswith(SQS_PREFIX)
    if fault.kind == "throttle":
        if sqs:
            code = "RequestThrottled" if fault.variant < 0.5 else "ThrottlingException"
        else:
            # RequestLimitExceeded: the account's on-demand throughput quota.
            code = (
                "ThrottlingException"
                if fault.variant < 1 / 3
                else "ProvisionedThroughputExceededException"
                if fault.variant < 2 / 3
                else "RequestLimitExceeded"
            )
        return code, error_response(target, code)
    if fault.kind == "conflict":
        if target == DDB_PREFIX + "TransactWriteItems":
            n = transaction_items(body)
            reason = (
                "TransactionConflict"
                if fault.variant < 0.7
                else "ThrottlingError"
                if fault.variant < 0.85
                else "ProvisionedThroughputExceeded"
            )
            failed = min(int(fault.index * n), n - 1)
            reasons = [{"Code": "None"} for _ in range(n)]
            reasons[failed] = {"Code": reason, "Message": CANCELLATION_MESSAGES[reason]}
            message = (
                "Transaction cancelled, please refer cancellation reasons for specific "
                "reasons [" + ", ".join(r["Code"] for r in reasons) + "]"
            )
            code = "TransactionCanceledException"
            return f"{code} ({reason})", error_response(
                target, code, {"CancellationReasons": reasons}, message
            )
        code = "TransactionConflictException"
        return code, error_response(target, code)
    # server_error
    if fault.variant < 0.75:
        code = "InternalError" if sqs else "InternalServerError"
    else:
        code = "ServiceUnavailable"
    return code, error_response(target, code)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle client connections are given up after this long.
    timeout = 300
    server_version = "fault-proxy"

    # One keep-alive connection to the upstream per client connection (each
    # client connection has a thread of its own), closed with it.
    upstream = None
    upstream_used = False

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("fault_proxy: " + (fmt % args) + "\n")

    def finish(self):
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def do_PATCH(self):
        self.handle_any()

    def do_OPTIONS(self):
        self.handle_any()

    # -- reading and writing --------------------------------------------------

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def respond(self, status, headers, body, head_length=None):
        reason = http.client.responses.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in headers:
            lines.append(f"{name}: {value}")
        length = head_length if head_length is not None else len(body)
        lines.append(f"Content-Length: {length}")
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += body
        self.wfile.write(data)
        self.wfile.flush()
        self.log_request(status, len(body))

    def drop(self):
        """Close the client connection without an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- forwarding -------------------------------------------------------------

    def forward(self, body):
        """Send the request upstream; (status, headers, body) of its answer."""
        up = self.server.upstream
        for attempt in (1, 2):
            reused = self.upstream is not None and self.upstream_used
            if self.upstream is None:
                cls = (
                    http.client.HTTPSConnection
                    if up.scheme == "https"
                    else http.client.HTTPConnection
                )
                self.upstream = cls(up.hostname, up.port, timeout=120)
                self.upstream_used = False
            conn = self.upstream
            try:
                conn.putrequest(
                    self.command,
                    self.server.upstream_path + self.path,
                    skip_host=True,
                    skip_accept_encoding=True,
                )
                for name, value in self.headers.items():
                    lower = name.lower()
                    if lower in HOP_BY_HOP or lower == "content-length":
                        continue
                    conn.putheader(name, value)
                if body or self.command in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                self.upstream_used = True
                headers = [
                    (n, v)
                    for n, v in resp.getheaders()
                    if n.lower() not in HOP_BY_HOP and n.lower() != "content-length"
                ]
                head_length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                if resp.will_close:
                    conn.close()
                    self.upstream = None
                return resp.status, headers, data, head_length
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self.upstream = None
                # An idle keep-alive connection the upstream had closed: the
                # request never reached it, so sending it again is safe.
                if attempt == 1 and reused:
                    continue
                raise
            except Exception:
                conn.close()
                self.upstream = None
                raise

    def handle_any(self):
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if self.path.startswith(CONTROL_PREFIX):
            self.control(body)
            return
        target = self.headers.get("X-Amz-Target")
        content_type = self.headers.get("Content-Type", "")
        if target is not None and not content_type.startswith("application/x-amz-json"):
            target = None
        injector = self.server.injector
        fault = injector.decide(target)
        if fault is not None and fault.kind != "lost":
            code, (status, headers, out) = canned_fault(target, fault, body)
            injector.count(target, fault.kind, code)
            if self.server.verbose:
                sys.stderr.write(f"fault_proxy: {target} -> {fault.kind} {code} {status}\n")
            self.respond(status, headers, out)
            return
        try:
            status, headers, out, head_length = self.forward(body)
        except Exception as e:  # the upstream is down or broke the connection
            injector.count_upstream_failure()
            sys.stderr.write(f"fault_proxy: upstream failed for {target or self.path}: {e!r}\n")
            msg = json.dumps({"message": f"fault_proxy: upstream failed: {e}"}).encode()
            self.close_connection = True
            self.respond(502, [("Content-Type", "application/json")], msg)
            return
        if fault is not None:  # lost: the upstream did it, the client never hears
            sqs = target.startswith(SQS_PREFIX)
            if fault.variant < 0.5:
                code = "InternalError" if sqs else "InternalServerError"
                injector.count(target, "lost", f"{code} after upstream {status}")
                if self.server.verbose:
                    sys.stderr.write(f"fault_proxy: {target} -> lost ({status}), 500\n")
                self.respond(*error_response(target, code))
            else:
                injector.count(target, "lost", f"connection closed after upstream {status}")
                injector.count_drop()
                if self.server.verbose:
                    sys.stderr.write(f"fault_proxy: {target} -> lost ({status}), dropped\n")
                self.drop()
            return
        self.respond(status, headers, out, head_length)

    def control(self, body):
        injector = self.server.injector
        path = self.path.split("?", 1)[0]
        if path == CONTROL_PREFIX + "stats" and self.command == "GET":
            doc = injector.stats()
            status = 200
        elif path == CONTROL_PREFIX + "rate" and self.command == "POST":
            try:
                rate = float(json.loads(body or b"{}")["rate"])
                if not 0.0 <= rate <= 1.0:
                    raise ValueError("rate must be within 0..1")
            except (ValueError, KeyError, TypeError) as e:
                doc, status = {"error": f"expected {{\"rate\": 0..1}}: {e}"}, 400
            else:
                injector.set_rate(rate)
                doc, status = {"rate": rate}, 200
        else:
            doc, status = {"error": f"no control endpoint {self.command} {path}"}, 404
        out = json.dumps(doc, indent=1).encode()
        self.respond(status, [("Content-Type", "application/json")], out)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that hung up (or timed out) is not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def parse_listen(value):
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_rate(value):
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("the rate is a probability, 0..1")
    return rate


def main():
    ap = argparse.ArgumentParser(
        description="Seeded fault-injecting proxy for DynamoDB and SQS emulators."
    )
    ap.add_argument("--upstream", required=True, help="emulator URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0), help="HOST:PORT")
    ap.add_argument("--rate", type=parse_rate, default=0.2, help="share of eligible requests that fail")
    ap.add_argument("--seed", type=int, help="replay the decisions of an earlier run")
    ap.add_argument("--port-file", help="write the listening port here once ready")
    ap.add_argument("--throttle", type=float, default=DEFAULT_WEIGHTS["throttle"])
    ap.add_argument("--conflict", type=float, default=DEFAULT_WEIGHTS["conflict"])
    ap.add_argument("--server-error", type=float, default=DEFAULT_WEIGHTS["server_error"])
    ap.add_argument("--lost", type=float, default=DEFAULT_WEIGHTS["lost"])
    ap.add_argument("--ops", help="comma-separated operations that may fail (replaces the default)")
    ap.add_argument("--exclude-ops", help="comma-separated operations that never fail")
    ap.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (a parent that dies takes the proxy with it)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    args = ap.parse_args()

    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        ap.error(f"--upstream must be an http(s) URL, got {args.upstream!r}")
    weights = {
        "throttle": args.throttle,
        "conflict": args.conflict,
        "server_error": args.server_error,
        "lost": args.lost,
    }
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        ap.error("the weights must be >= 0 and not all 0")
    ops = [qualify(o) for o in args.ops.split(",") if o.strip()] if args.ops else list(DATA_OPS)
    if args.exclude_ops:
        excluded = {qualify(o) for o in args.exclude_ops.split(",") if o.strip()}
        ops = [o for o in ops if o not in excluded]
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    server = Server(args.listen, Handler)
    server.upstream = upstream
    server.upstream_path = upstream.path.rstrip("/")
    server.injector = Injector(seed, args.rate, weights, ops)
    server.verbose = args.verbose
    host, port = server.server_address[:2]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"listening on http://{host}:{port} seed={seed}", flush=True)

    if args.exit_on_stdin_eof:

        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            finally:
                os._exit(0)

        threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
