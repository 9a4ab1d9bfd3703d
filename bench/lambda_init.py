#!/usr/bin/env python3
"""Cold start of a release Lambda bootstrap, side by side with a hello world.

Issue 11 §2: each function's init (process start to its first
`GET /2018-06-01/runtime/invocation/next`) should stay within 1.5x of a
hello-world `lambda_runtime` binary built the same way, and its first
invocation should not pay for setting up the DynamoDB connection. This
script measures both, offline, under a Runtime API of its own:

* **init**: from just before the process is spawned to the arrival of its
  first `/next` request;
* **first invocation**: from handing it the first event (the answer to that
  `/next`) to the arrival of its `POST .../invocation/<id>/response`.

Each run starts the bootstrap fresh with a fresh Runtime API, then kills it
once it has answered. The clock starts just before `Popen`, so both
binaries' init includes the same fork and exec. Runs alternate between the
function and the baseline (and which of the two goes first), so machine
noise hits both alike.

The function gets the environment template.yaml gives it: the tables of a
fresh `pigeonhole-infra` provisioning, its own settings and only its own
secrets (as plain variables, or with `--secrets-manager` as
`<NAME>_SECRET_ARN`s read from the emulator at cold start, as deployed).
Without `--dynamodb-endpoint` a moto server is started
(`scripts/moto_server.py`, with the Python of `target/pyenv`).

`--tls` puts a TLS-terminating proxy on loopback in front of the emulator
(a throwaway CA and a certificate for localhost/127.0.0.1 made with the
`openssl` CLI) and gives the bootstraps `AWS_ENDPOINT_URL=https://localhost:<port>`
and `SSL_CERT_FILE` (the system bundle plus that CA, which
rustls-native-certs reads instead of the system store), so the SDK does a
real handshake. `--proxy-delay-ms N` holds each new connection N ms before
its handshake, like a network round trip. The report then also says how
many connections each function opened during init (before `/next`).

Usage:

    python3 bench/lambda_init.py --bin-dir DIR [--function register]
        [--baseline HELLO_BOOTSTRAP] [--runs 10] [--warmup 1]
        [--event FILE] [--dynamodb-endpoint URL] [--infra-env FILE]
        [--infra-bin PATH] [--moto-python PATH]
        [--tls] [--proxy-delay-ms N] [--secrets-manager] [--set NAME=VALUE] [--json]

`--infra-bin` defaults to $PIGEONHOLE_INFRA_BIN, then
target/{release,debug}/pigeonhole-infra, and only then `cargo run`.

`--bin-dir` holds the bootstraps as `<dir>/<function>` (target/release),
`<dir>/<function>/bootstrap` (cargo lambda) or `<dir>/<LogicalId>/bootstrap`
(sam build). The default event for `register` registers a new client per
run with the admin token (it reaches DynamoDB; a request refused for its
credentials would not). Other functions get `events/<function>.json` or
`--event FILE`; `<CLIENT_ID>`/`<API_TOKEN>` placeholders are filled with a
client that the register bootstrap of `--bin-dir` registers first, and
`<ADMIN_TOKEN>`/`<OPERATOR_TOKEN>` with the bench's own tokens.

Standard library only (Python 3.11+), plus the helpers of
tests/python/lambda_runtime.py (secrets per function, provisioning).
Build nothing here: pass bootstraps that exist.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = "/2018-06-01/runtime"
ACCOUNT = "123456789012"
ADMIN_TOKEN = "bench-admin-" + secrets.token_hex(12)
OPERATOR_TOKEN = "bench-operator-" + secrets.token_hex(8)
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


# ---------------------------------------------------------------------------
# The project's helpers
# ---------------------------------------------------------------------------

def load_lambda_runtime() -> types.ModuleType:
    """tests/python/lambda_runtime.py: the secret split per function, the
    template's settings and the provisioning, kept in one place.

    It reports problems with `pytest.fail`, and the bench runs outside
    pytest (often without it installed), so a stand-in module turns those
    into an exit with the message."""
    stub = types.ModuleType("pytest")

    def fail(reason: str = "", pytrace: bool = True):
        raise SystemExit(f"lambda_init: {reason}")

    stub.fail = fail
    sys.modules["pytest"] = stub
    sys.path.insert(0, str(REPO / "tests" / "python"))
    import lambda_runtime  # noqa: E402 (needs the stand-in first)
    return lambda_runtime


LR = load_lambda_runtime()


def find_bootstrap(bin_dir: Path, function: str) -> Path:
    """`function`'s bootstrap in any layout lambda_runtime.py accepts."""
    candidates = [bin_dir / function, bin_dir / function / "bootstrap",
                  bin_dir / LR._logical_id(function) / "bootstrap"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise SystemExit(f"lambda_init: no bootstrap for {function} (looked for "
                     + ", ".join(map(str, candidates)) + ")")


# ---------------------------------------------------------------------------
# The event loop the servers run on
# ---------------------------------------------------------------------------

class EventLoop:
    """An asyncio loop on a thread of its own, so the Runtime API and the
    proxy take their timestamps the moment bytes arrive while the main
    thread spawns, waits for and kills processes."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---------------------------------------------------------------------------
# A minimal Lambda Runtime API
# ---------------------------------------------------------------------------

@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict
    body: bytes
    arrived_ns: int  # when the request line came in


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """One HTTP/1.1 request (Content-Length or chunked body); None at EOF.
    The timestamp is taken as soon as the request line is in."""
    line = await reader.readline()
    if not line:
        return None
    arrived = time.perf_counter_ns()
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        while await reader.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return HttpRequest(method, urllib.parse.urlsplit(target).path, headers, body, arrived)


def http_response(status: int, body: bytes = b"", headers: dict | None = None) -> bytes:
    """A whole HTTP/1.1 response with a JSON body (keep-alive: the runtime
    reuses its connection)."""
    reason = {200: "OK", 202: "Accepted", 404: "Not Found"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RuntimeApi:
    """The Runtime API for one process start: the first `/next` gets the
    event, the next one waits until the process is killed. Records when
    each step arrived; `done` is set once the invocation has a result (or
    the init failed)."""

    RESULT = re.compile(rf"^{RUNTIME}/invocation/([^/]+)/(response|error)$")

    def __init__(self, event: bytes, function_name: str):
        self.event = event
        self.function_name = function_name
        self.request_id = str(uuid.uuid4())
        self.next_ns: int | None = None        # first /next arrived
        self.event_sent_ns: int | None = None  # the event was written back
        self.result_ns: int | None = None      # response/error arrived
        self.result_kind: str | None = None    # "response", "error" or "init_error"
        self.result_body = b""
        self.done = threading.Event()
        self._server = None
        self._closing = None
        self._writers = []

    async def start(self) -> int:
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing.set()
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader, writer) -> None:
        self._writers.append(writer)
        try:
            while (request := await read_request(reader)) is not None:
                if not await self._answer(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, request: HttpRequest, writer) -> bool:
        """Answers one request; False ends the connection."""
        path = request.path
        if request.method == "GET" and path == f"{RUNTIME}/invocation/next":
            if self.next_ns is not None:
                await self._closing.wait()  # one invocation per process start
                return False
            self.next_ns = request.arrived_ns
            writer.write(http_response(200, self.event, self._event_headers()))
            self.event_sent_ns = time.perf_counter_ns()  # write() sent it; drain may yield
            await writer.drain()
            return True
        if request.method == "POST" and path == f"{RUNTIME}/init/error":
            self._finish("init_error", request)
        elif request.method == "POST" and (match := self.RESULT.match(path)):
            self._finish(match.group(2), request)
        else:
            writer.write(http_response(404, b'{"errorMessage":"not found"}'))
            await writer.drain()
            return True
        writer.write(http_response(202, b'{"status":"OK"}'))
        await writer.drain()
        return True

    def _event_headers(self) -> dict:
        deadline_ms = int(time.time() * 1000) + 30_000
        return {
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn":
                f"arn:aws:lambda:{LR.REGION}:{ACCOUNT}:function:{self.function_name}",
            "Lambda-Runtime-Trace-Id":
                f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
                f"Parent={secrets.token_hex(8)};Sampled=0",
        }

    def _finish(self, kind: str, request: HttpRequest) -> None:
        if self.result_kind is None:
            self.result_ns, self.result_kind, self.result_body = \
                request.arrived_ns, kind, request.body
        self.done.set()


# ---------------------------------------------------------------------------
# TLS on loopback
# ---------------------------------------------------------------------------

def make_certs(directory: Path) -> dict:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1
    signed by it (P-256, two days), made with the openssl CLI. rustls wants
    a CA marked as one and a leaf with the names as SANs and serverAuth."""
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\n")
    steps = [
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"],
        ["req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
         "-subj", "/CN=pigeonhole bench throwaway CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem"],
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", "server.key"],
        ["req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-sha256",
         "-extfile", "server.ext", "-out", "server.pem"],
    ]
    for step in steps:
        result = subprocess.run(["openssl", *step], cwd=directory, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise SystemExit(f"lambda_init: openssl {' '.join(step)} failed:\n{result.stdout}")
    # What the bootstraps trust: the system's roots plus the throwaway CA,
    # so loading the trust store costs what it costs on Lambda.
    bundle = directory / "trust.pem"
    system = next((Path(p) for p in SYSTEM_BUNDLES if Path(p).is_file()), None)
    bundle.write_text((system.read_text() if system else "")
                      + "\n" + (directory / "ca.pem").read_text())
    return {"ca": directory / "ca.pem", "cert": directory / "server.pem",
            "key": directory / "server.key", "bundle": bundle}


class TlsProxy:
    """Terminates TLS on loopback and forwards the bytes to a plain-HTTP
    emulator. Records when each connection was accepted, so a run can tell
    whether the function connected during init or only when invoked."""

    def __init__(self, upstream: str, certs: dict, delay_ms: float):
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http":
            raise SystemExit(f"lambda_init: --tls needs a plain http:// endpoint, got {upstream}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.delay = delay_ms / 1000.0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs["cert"], certs["key"])
        self.context.set_alpn_protocols(["http/1.1"])  # the emulators speak HTTP/1.1
        self.accepted_ns: list[int] = []
        self.port = None
        self._servers = []

    async def start(self) -> int:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        try:  # where `localhost` also means ::1, answer there too
            self._servers.append(await asyncio.start_server(self._serve, "::1", self.port))
        except OSError:
            pass
        return self.port

    async def close(self) -> None:
        for server in self._servers:
            server.close()

    async def _serve(self, reader, writer) -> None:
        self.accepted_ns.append(time.perf_counter_ns())
        upstream_writer = None
        try:
            # The ClientHello must reach the TLS layer, not the plain
            # reader's buffer: read nothing until start_tls takes over (it
            # resumes reading). This first step runs before the loop polls
            # the new socket, so nothing has been read yet.
            writer.transport.pause_reading()
            if self.delay:
                await asyncio.sleep(self.delay)  # one round trip, before the handshake
            await writer.start_tls(self.context)
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if upstream_writer is not None:
                upstream_writer.close()


async def _pipe(reader, writer) -> None:
    """Copies one direction until EOF, then closes the other side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


def check_tls(port: int, ca: Path) -> None:
    """One handshake through the proxy with the CA alone, so a bad
    certificate fails here with a clear message, not as a function error."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with context.wrap_socket(socket.create_connection(("localhost", port), 10),
                                 server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            tls.recv(1)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"lambda_init: TLS through the proxy on :{port} failed: {e}")


# ---------------------------------------------------------------------------
# The emulated AWS services and the function's environment
# ---------------------------------------------------------------------------

def start_moto(logdir: Path, python: Path):
    """scripts/moto_server.py on a free port, with a Python that has moto;
    returns (endpoint, Proc)."""
    port = LR.free_port()
    proc = LR.spawn("moto", [python, REPO / "scripts" / "moto_server.py", "127.0.0.1", port],
                    logdir, dict(os.environ))
    endpoint = f"http://127.0.0.1:{port}"
    LR.wait_http(endpoint + "/moto-api/data.json", proc)
    return endpoint, proc


def read_env_file(path: Path) -> dict:
    """KEY=VALUE lines, as pigeonhole-infra --env-file writes them."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def create_secrets(endpoint: str, values: dict, prefix: str) -> dict:
    """Stores each value in the emulator's Secrets Manager; returns
    `<NAME>_SECRET_ARN` variables. Unsigned: the emulators take the service
    from the credential scope and check no signature."""
    arns = {}
    for name, value in values.items():
        request = urllib.request.Request(
            endpoint.rstrip("/") + "/", method="POST",
            data=json.dumps({"Name": f"{prefix}{name}", "SecretString": value}).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "secretsmanager.CreateSecret",
                "Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/"
                                 f"{LR.REGION}/secretsmanager/aws4_request, "
                                 "SignedHeaders=host, Signature=0",
            })
        with urllib.request.urlopen(request, timeout=30) as response:
            arns[f"{name}_SECRET_ARN"] = json.load(response)["ARN"]
    return arns


def secret_values() -> dict:
    """Every secret a function may need: the tokens, and base64 of 32
    random bytes per purpose key (as the template generates them)."""
    values = {"ADMIN_TOKEN": ADMIN_TOKEN, "OPERATOR_TOKENS": OPERATOR_TOKEN}
    for name in ("TOKEN_KEY", "FINGERPRINT_KEY", "WRAPPING_KEY", "AT_REST_KEY"):
        values[name] = base64.b64encode(os.urandom(32)).decode()
    return values


def function_env(function: str, endpoint: str, infra_env: dict, secret_env: dict) -> dict:
    """What template.yaml gives `function` (the tables, its own settings and
    secrets) and what Lambda adds, but no Runtime API address yet."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **LR.aws_env(endpoint)}
    env.update({k: infra_env[k] for k in LR.TABLE_VARS})
    settings = {
        "FANOUT_QUEUE_URL": infra_env.get("FANOUT_QUEUE_URL", ""),
        # On, as deployed (its state is part of a poll's cost), but high
        # enough that no run is refused.
        "POLL_RATE_LIMIT": "1000000",
        "ACKED_RETENTION_SECS": "86400",
        "SENT_RETENTION_SECS": "604800",
    }
    env.update({k: v for k, v in settings.items() if function in LR.ONLY_FOR[k]})
    for name in LR.SECRETS.get(function, ()):
        arn = f"{name}_SECRET_ARN"
        env.update({arn: secret_env[arn]} if arn in secret_env else {name: secret_env[name]})
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",  # the template's MemorySize
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",  # the template's LoggingConfig
        "RUST_LOG": "info",               # the template's LogLevel default
        "STACK_NAME": "bench",
    })
    return env


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------

def register_event() -> bytes:
    """events/register.json with a new fingerprint and the admin token:
    a 201 that writes to DynamoDB, past the per-address register limit."""
    event = json.loads((REPO / "events" / "register.json").read_text())
    body = json.dumps({"fingerprint": "bench-" + secrets.token_hex(16), "name": "bench"})
    event["body"] = body
    event["headers"]["content-length"] = str(len(body))
    event["headers"]["x-admin-token"] = ADMIN_TOKEN
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    return json.dumps(event).encode()


PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def fill_event(text: str, client: dict | None) -> bytes:
    """A sample event with the bench's tokens (and the client's
    credentials, when given) in place of its placeholders."""
    fills = {"<ADMIN_TOKEN>": ADMIN_TOKEN, "<OPERATOR_TOKEN>": OPERATOR_TOKEN}
    if client:
        fills.update({"<CLIENT_ID>": client["client_id"], "<API_TOKEN>": client["api_token"]})
    for placeholder, value in fills.items():
        text = text.replace(placeholder, value)
    left = sorted(set(PLACEHOLDER.findall(text)))
    if left:
        print(f"warning: the event still holds {', '.join(left)}; the function may refuse "
              "it before it reaches DynamoDB", file=sys.stderr)
    json.loads(text)  # fail here on a broken file, not in the function
    return text.encode()


# ---------------------------------------------------------------------------
# One process start
# ---------------------------------------------------------------------------

@dataclass
class Sample:
    role: str                      # "function" or "baseline"
    init_ms: float | None = None
    first_ms: float | None = None
    status: int | None = None      # the HTTP statusCode the function answered
    result: str | None = None      # "response", "error", "init_error", "exit", "timeout"
    body: bytes = b""
    connections_at_init: int | None = None
    connections_total: int | None = None
    logs: str = ""

    @property
    def answered(self) -> bool:
        """Initialised and handed back a result (a response or an error)."""
        return self.result in ("response", "error") and self.init_ms is not None


def run_once(loop: EventLoop, role: str, binary: Path, env: dict, event: bytes,
             logdir: Path, timeout: float, proxy: TlsProxy | None = None) -> Sample:
    """Starts `binary` against a fresh Runtime API, times its init and first
    invocation, and kills it (its whole process group) once it answered."""
    api = RuntimeApi(event, env["AWS_LAMBDA_FUNCTION_NAME"])
    port = loop.run(api.start())
    env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}")
    logdir.mkdir(parents=True, exist_ok=True)
    tag = f"{role}-{time.monotonic_ns()}"
    out_path, err_path = logdir / f"{tag}.stdout.log", logdir / f"{tag}.stderr.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter_ns()
        popen = subprocess.Popen([str(binary)], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, env=env, start_new_session=True)
    sample = Sample(role)
    try:
        deadline = time.monotonic() + timeout
        while not api.done.wait(0.02):
            if popen.poll() is not None:
                sample.result = "exit"
                break
            if time.monotonic() > deadline:
                sample.result = "timeout"
                break
    finally:
        _kill(popen)
        loop.run(api.close())
    if api.next_ns is not None:
        sample.init_ms = (api.next_ns - started) / 1e6
    if api.result_kind:
        sample.result, sample.body = api.result_kind, api.result_body
    if api.result_kind in ("response", "error") and api.event_sent_ns is not None:
        sample.first_ms = (api.result_ns - api.event_sent_ns) / 1e6
    if api.result_kind == "response":
        sample.status = _status_of(api.result_body)
    if proxy is not None:
        accepted = [t for t in proxy.accepted_ns if t >= started]
        sample.connections_total = len(accepted)
        sample.connections_at_init = sum(1 for t in accepted
                                         if api.next_ns is None or t < api.next_ns)
    if sample.result != "response":
        sample.logs = (f"exit code {popen.returncode}\n--- stdout ---\n"
                       + _tail(out_path) + "\n--- stderr ---\n" + _tail(err_path))
    return sample


def _kill(popen: subprocess.Popen) -> None:
    """SIGKILL the process group this bench started (its leader's pid)."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    popen.wait(10)


def _status_of(body: bytes) -> int | None:
    """The HTTP status in a lambda_http response; None for other payloads."""
    try:
        status = json.loads(body).get("statusCode")
        return int(status) if status is not None else None
    except (ValueError, AttributeError, TypeError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    """The end of a run's log, for the message of a failed run."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def check(sample: Sample, what: str, errors_ok: bool = False) -> None:
    """Stops the bench at a run that did not answer, or answered with an
    error: its numbers would measure a failure. The baseline only has to
    start and answer (`errors_ok`): its init is what it is there for, and
    any bootstrap can stand in for it when checking the bench itself."""
    if not sample.answered or (sample.result == "error" and not errors_ok):
        raise SystemExit(f"lambda_init: {what}: no response ({sample.result}); "
                         f"body {sample.body[:500]!r}\n{sample.logs}")
    if sample.status is not None and sample.status >= 500:
        raise SystemExit(f"lambda_init: {what} answered {sample.status}: {sample.body[:500]!r}")


def setup_client(loop: EventLoop, bin_dir: Path, env: dict, logdir: Path,
                 timeout: float) -> dict:
    """Registers one client through the register bootstrap (untimed), for
    events that act as a client."""
    binary = find_bootstrap(bin_dir, "register")
    sample = run_once(loop, "setup-register", binary, env, register_event(), logdir, timeout)
    check(sample, "registering the bench's client")
    return json.loads(json.loads(sample.body)["body"])


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

def percentile(values: list, q: float) -> float | None:
    """Linear interpolation between the closest ranks (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples: list) -> dict:
    """Median, p90 and min of one binary's runs, and what it answered."""
    inits = [s.init_ms for s in samples if s.init_ms is not None]
    firsts = [s.first_ms for s in samples if s.first_ms is not None]
    out = {
        "runs": len(samples),
        "init_ms": {"median": percentile(inits, 0.5), "p90": percentile(inits, 0.9),
                    "min": min(inits, default=None), "all": [round(v, 3) for v in inits]},
        "first_invocation_ms": {"median": percentile(firsts, 0.5),
                                "p90": percentile(firsts, 0.9),
                                "all": [round(v, 3) for v in firsts]},
        "statuses": sorted({s.status for s in samples if s.status is not None}),
        "runtime_errors": sum(1 for s in samples if s.result == "error"),
    }
    conns = [s.connections_at_init for s in samples if s.connections_at_init is not None]
    if conns:
        out["connections_opened_during_init"] = conns
        out["connections_opened"] = [s.connections_total for s in samples]
    return out


def print_report(report: dict) -> None:
    """The table: init and first invocation per binary, then the ratio."""
    def ms(value):
        return "-" if value is None else f"{value:.2f}"

    how = (f"TLS proxy, +{report['proxy_delay_ms']:g} ms per connection" if report["tls"]
           else "plain HTTP")
    if report["secrets_manager"]:
        how += ", secrets from Secrets Manager"
    print(f"\n{report['function']}: {report['runs']} runs after {report['warmup']} warm-up; "
          f"emulator {report['endpoint']} ({how})")
    print(f"{'ms':<24}{'init med':>10}{'init p90':>10}{'init min':>10}"
          f"{'1st inv med':>13}{'1st inv p90':>13}{'size MB':>9}")
    for key in ("function_stats", "baseline_stats"):
        if key in report:
            s = report[key]
            print(f"{s['name'][:23]:<24}{ms(s['init_ms']['median']):>10}"
                  f"{ms(s['init_ms']['p90']):>10}{ms(s['init_ms']['min']):>10}"
                  f"{ms(s['first_invocation_ms']['median']):>13}"
                  f"{ms(s['first_invocation_ms']['p90']):>13}{s['size_bytes'] / 1e6:>9.1f}")
    errors = report.get("baseline_stats", {}).get("runtime_errors")
    if errors:
        print(f"(the baseline answered {errors} of its events with a runtime error; "
              "its init still counts)")
    if report.get("init_ratio") is not None:
        print(f"init ratio {report['function']}/baseline (medians): "
              f"{report['init_ratio']:.2f} (goal: <= 1.5)")
    stats = report["function_stats"]
    print(f"{report['function']} answered HTTP "
          + (", ".join(map(str, stats["statuses"])) or "(no statusCode)"))
    if "connections_opened_during_init" in stats:
        print("TLS connections opened during init / in all, per run: "
              + " ".join(f"{a}/{b}" for a, b in zip(stats["connections_opened_during_init"],
                                                    stats["connections_opened"])))
    print("init: spawn to the first /next; 1st inv: the event handed over to its response")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Init and first-invocation time of a Lambda bootstrap, next to a "
                    "hello-world lambda_runtime binary, under a local Runtime API.")
    parser.add_argument("--bin-dir", type=Path, required=True,
                        help="the bootstraps (target/release, target/lambda or a sam build dir)")
    parser.add_argument("--function", default="register", choices=LR.FUNCTIONS)
    parser.add_argument("--event", type=Path, help="the event (default: a register of a new "
                        "client for register, else events/<function>.json)")
    parser.add_argument("--baseline", type=Path, help="the hello-world lambda_runtime bootstrap")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of each first (page cache, the emulator's own warm-up)")
    parser.add_argument("--dynamodb-endpoint", help="a running emulator (plain http); "
                        "default: start moto")
    parser.add_argument("--infra-env", type=Path, help="an env file pigeonhole-infra already "
                        "wrote for that endpoint (skips provisioning)")
    parser.add_argument("--infra-bin", type=Path,
                        default=os.environ.get("PIGEONHOLE_INFRA_BIN"),
                        help="a built pigeonhole-infra (default: target/{release,debug}, "
                             "else `cargo run`)")
    parser.add_argument("--moto-python", type=Path,
                        help="a Python with moto (default: target/pyenv/bin/python)")
    parser.add_argument("--tls", action="store_true",
                        help="reach the emulator through a TLS proxy on loopback")
    parser.add_argument("--proxy-delay-ms", type=float, default=0.0,
                        help="with --tls: hold each new connection this long before its handshake")
    parser.add_argument("--secrets-manager", action="store_true",
                        help="secrets as <NAME>_SECRET_ARN read from the emulator at cold start, "
                             "as deployed (default: plain variables)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra variable for the measured function (repeatable), "
                             "e.g. DYNAMODB_WARM_UP=off")
    parser.add_argument("--timeout", type=float, default=30.0, help="per run, seconds")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.proxy_delay_ms and not args.tls:
        parser.error("--proxy-delay-ms needs --tls")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def provision_endpoint(args, workdir: Path, procs: list) -> tuple:
    """The emulator's endpoint (moto started here unless one was given) and
    the tables and queues to use in it."""
    endpoint = args.dynamodb_endpoint
    if not endpoint:
        python = args.moto_python or next(
            (p for p in (REPO / "target" / "pyenv" / "bin" / "python",) if p.exists()),
            Path(sys.executable))
        endpoint, moto = start_moto(workdir / "logs", python)
        procs.append(moto)
    if args.infra_env:
        return endpoint, read_env_file(args.infra_env)
    infra = args.infra_bin or next(
        (p for p in (REPO / "target" / "release" / "pigeonhole-infra",
                     REPO / "target" / "debug" / "pigeonhole-infra") if p.exists()), None)
    if infra:
        os.environ["PIGEONHOLE_INFRA_BIN"] = str(infra)
    prefix = f"bench-{os.getpid()}-{secrets.token_hex(3)}-"
    return endpoint, LR.provision(endpoint, prefix, workdir / "infra.env")


def event_maker(args, loop: EventLoop, register_env: dict, logdir: Path):
    """What each run of the function is handed: a register of a new client
    by default, else the event file with its placeholders filled (after
    registering a client, when the event acts as one)."""
    if args.function == "register" and not args.event:
        return register_event
    text = (args.event or REPO / "events" / f"{args.function}.json").read_text()
    client = None
    if "<CLIENT_ID>" in text or "<API_TOKEN>" in text:
        client = setup_client(loop, args.bin_dir, register_env, logdir, args.timeout)
    event = fill_event(text, client)
    return lambda: event


def measure(args, loop: EventLoop, binary: Path, env: dict, make_event, logdir: Path,
            proxy: TlsProxy | None) -> dict:
    """The warm-up and timed runs, alternating the function and the
    baseline and which of them goes first, so that noise hits both."""
    baseline_env = dict(env, AWS_LAMBDA_FUNCTION_NAME="hello",
                        AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/hello")
    samples = {"function": [], "baseline": []}
    progress = sys.stderr.isatty()
    for round_ in range(args.warmup + args.runs):
        order = ("function", "baseline") if round_ % 2 == 0 else ("baseline", "function")
        for role in order:
            if role == "function":
                sample = run_once(loop, role, binary, env, make_event(), logdir,
                                  args.timeout, proxy)
                check(sample, f"{args.function} (round {round_ + 1})")
            elif args.baseline:
                sample = run_once(loop, role, args.baseline, baseline_env, b"{}", logdir,
                                  args.timeout)
                check(sample, f"baseline (round {round_ + 1})", errors_ok=True)
            else:
                continue
            if round_ >= args.warmup:
                samples[role].append(sample)
        if progress:
            print(f"\rround {round_ + 1}/{args.warmup + args.runs}", end="", file=sys.stderr,
                  flush=True)
    if progress:
        print(file=sys.stderr)
    return samples


def main(argv: list) -> int:
    args = parse_args(argv)
    binary = find_bootstrap(args.bin_dir, args.function)
    workdir = Path(tempfile.mkdtemp(prefix="lambda-init-"))
    logdir = workdir / "logs"
    loop, procs, proxy, finished = EventLoop(), [], None, False
    try:
        endpoint, infra_env = provision_endpoint(args, workdir, procs)
        secret_env = secret_values()
        if args.secrets_manager:
            secret_env.update(create_secrets(endpoint, secret_env,
                                             f"bench-{secrets.token_hex(3)}-"))
        function_endpoint, extra_env = endpoint, {}
        if args.tls:
            certs = make_certs(workdir)
            proxy = TlsProxy(endpoint, certs, args.proxy_delay_ms)
            port = loop.run(proxy.start())
            check_tls(port, certs["ca"])
            function_endpoint = f"https://localhost:{port}"
            extra_env = {"SSL_CERT_FILE": str(certs["bundle"])}

        def env_for(function):
            return {**function_env(function, function_endpoint, infra_env, secret_env),
                    **extra_env}

        overrides = dict(item.partition("=")[::2] for item in args.set)
        make_event = event_maker(args, loop, env_for("register"), logdir)
        samples = measure(args, loop, binary, {**env_for(args.function), **overrides}, make_event,
                          logdir, proxy)
        report = build_report(args, binary, endpoint, samples)
        print_report(report)
        if args.json:
            print(json.dumps(report, indent=2))
        finished = True
        return 0
    finally:
        if proxy is not None:
            loop.run(proxy.close())
        loop.close()
        for proc in reversed(procs):
            LR.stop(proc)
        if args.keep_logs or not finished:
            print(f"logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def build_report(args, binary: Path, endpoint: str, samples: dict) -> dict:
    """Everything the table shows, as plain data for --json."""
    report = {
        "function": args.function, "runs": args.runs, "warmup": args.warmup,
        "endpoint": endpoint, "tls": args.tls, "proxy_delay_ms": args.proxy_delay_ms,
        "secrets_manager": args.secrets_manager,
        "function_stats": {"name": args.function, "path": str(binary),
                           "size_bytes": binary.stat().st_size,
                           **summary(samples["function"])},
    }
    if args.baseline:
        report["baseline_stats"] = {"name": args.baseline.name
                                    if args.baseline.name != "bootstrap"
                                    else args.baseline.parent.name,
                                    "path": str(args.baseline),
                                    "size_bytes": args.baseline.stat().st_size,
                                    **summary(samples["baseline"])}
        fn = report["function_stats"]["init_ms"]["median"]
        base = report["baseline_stats"]["init_ms"]["median"]
        report["init_ratio"] = fn / base if base else None
    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
