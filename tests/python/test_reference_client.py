"""The Python reference client (clients/python) against the real `pigeonhole-local`.

- pigeonhole_client.py as a library: register, publish (admin helper), poll +
  verify + decrypt, ack, send with safe retries, the listen loop's backoff
  (driven with an injected sleep, never real waiting), typed errors.
- A scripted stub server covers what the real one can't be made to do on
  demand: 5xx, a chosen Retry-After (429, 503 `unavailable`), a tampered
  delivery, publish retries under one Idempotency-Key.
- The operator tool and the client's command line, run as the console scripts
  the package installs (pigeonhole-operator, pigeonhole-client).
- The modules come from the installed package (scripts/test.sh runs
  `pip install ./clients/python`; see installed.py); the single files as a
  user copies them are checked too: standard library plus their documented
  dependencies only, and run from a directory of their own.
- Issue 8: rotate (library and command line, including a rotation whose
  answer was lost), operator delete, the registration limit, plain http
  refused for hosts that are not loopback, Content-Type on every POST, and
  names with terminal escapes shown escaped.
- Issue 9: read_sent / iter_sent (paging, 204, 404, --follow's backoff and
  Retry-After) and the `inbox` command line; the operators' sent_head.
  Audiences, delivery status and expiry: publish to tags / everyone with
  ttl_secs, publish_status and iter_recipient_status, the operator's set_tags
  and tag filter, poll/listen acknowledging next_cursor past expired ids (and
  pages with no message), and the `status` / `tag` command lines.
"""
from __future__ import annotations

import ast
import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from docutil import REPO
from harness import start_server, stop_server
from installed import CLIENT_DIR, console_script, installed_module

CLIENT_PY = CLIENT_DIR / "pigeonhole_client.py"
OPERATOR_PY = CLIENT_DIR / "pigeonhole_operator.py"
CLIENT_CLI = "pigeonhole-client"
OPERATOR_CLI = "pigeonhole-operator"
FORMAT_VECTORS = REPO / "shared" / "tests" / "data" / "pigeonhole_format_vectors.json"


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phc():
    """``import pigeonhole_client``, from the installed package."""
    return installed_module("pigeonhole_client")


@pytest.fixture(scope="module")
def opt():
    """``import pigeonhole_operator``, from the installed package."""
    return installed_module("pigeonhole_operator")


@pytest.fixture(scope="module")
def start_local_server(tmp_path_factory):
    """Factory: start another real server with extra environment (e.g. POLL_RATE_LIMIT)."""
    started = []

    def start(**env):
        srv = start_server(tmp_path_factory.mktemp("pigeonhole-ref"), admin_token="test-admin-token",
                           operator_token="test-operator-token", extra_env={k: str(v) for k, v in env.items()})
        started.append(srv)
        return srv

    yield start
    for srv in started:
        stop_server(srv)


@pytest.fixture(scope="module")
def limited_server(start_local_server):
    """A server allowing one poll per minute per client."""
    return start_local_server(POLL_RATE_LIMIT=1)


def _new_client(phc, server, name: str, **kwargs):
    creds = phc.PigeonholeClient.register(server.origin, f"pytest-ref-{name}-{uuid.uuid4()}", name=name)
    return creds, phc.PigeonholeClient.from_credentials(creds, **kwargs)


def _publish(phc, server, ids, type_="greeting", payload=None):
    return phc.publish(server.origin, server.admin_token, ids, type_, payload)


class Recorder:
    """An injectable sleep that records the waits and can run an action at wait number n."""

    def __init__(self, actions=None):
        self.sleeps = []
        self.actions = actions or {}

    def __call__(self, seconds):
        self.sleeps.append(seconds)
        action = self.actions.get(len(self.sleeps))
        if action:
            action()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stub:
    """A scripted HTTP server: each poll/send/publish/register/rotate/list/delete/sent answers with
    the next scripted reply (default: 204 for polls). Records every request, and the headers
    of each in ``headers`` (same order)."""

    def __init__(self, poll=(), send=(), publish=(), register=(), rotate=(), listing=(), delete=(), sent=(),
                 status=(), tags=()):
        self.poll_script = list(poll)
        self.status_script = list(status)
        self.tags_script = list(tags)
        self.sent_script = list(sent)
        self.send_script = list(send)
        self.publish_script = list(publish)
        self.register_script = list(register)
        self.rotate_script = list(rotate)
        self.listing_script = list(listing)
        self.delete_script = list(delete)
        self.requests = []  # (method, path, json body or None)
        self.headers = []  # the request headers, a dict per request
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, headers=None, body=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stub.requests.append(("GET", self.path, None))
                stub.headers.append(dict(self.headers))
                if self.path.startswith("/api/v1/messages/poll"):
                    return self._reply(*(stub.poll_script.pop(0) if stub.poll_script else (204,)))
                if self.path.startswith("/api/v1/operators/clients") and stub.listing_script:
                    return self._reply(*stub.listing_script.pop(0))
                if self.path.startswith("/api/v1/clients/") and "/sent" in self.path and stub.sent_script:
                    return self._reply(*stub.sent_script.pop(0))
                if self.path.startswith("/api/v1/messages/publish/") and stub.status_script:
                    return self._reply(*stub.status_script.pop(0))
                self._reply(404, None, {"error": {"code": "not_found", "message": "no"}})

            def do_PUT(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                stub.requests.append(("PUT", self.path, body))
                stub.headers.append(dict(self.headers))
                if self.path.startswith("/api/v1/operators/clients/") and stub.tags_script:
                    return self._reply(*stub.tags_script.pop(0))
                self._reply(404, None, {"error": {"code": "not_found", "message": "no"}})

            def do_DELETE(self):
                stub.requests.append(("DELETE", self.path, None))
                stub.headers.append(dict(self.headers))
                if self.path.startswith("/api/v1/operators/clients/") and stub.delete_script:
                    return self._reply(*stub.delete_script.pop(0))
                self._reply(404, None, {"error": {"code": "not_found", "message": "no"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                stub.requests.append(("POST", self.path, body))
                stub.headers.append(dict(self.headers))
                if self.path == "/api/v1/messages/publish":
                    return self._reply(*stub.publish_script.pop(0))
                if self.path == "/api/v1/messages/ack":
                    return self._reply(200, None, {"cursor": body["last_received_id"]})
                if self.path == "/api/v1/messages/send":
                    return self._reply(*stub.send_script.pop(0))
                if self.path == "/api/v1/clients/register" and stub.register_script:
                    return self._reply(*stub.register_script.pop(0))
                if self.path == "/api/v1/clients/rotate" and stub.rotate_script:
                    return self._reply(*stub.rotate_script.pop(0))
                self._reply(404, None, {"error": {"code": "not_found", "message": "no"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def calls(self, method, path):
        return [b for m, p, b in self.requests if m == method and p.startswith(path)]

    def headers_of(self, method, path):
        return [h for (m, p, _), h in zip(self.requests, self.headers) if m == method and p.startswith(path)]


def _error(status, code, message="scripted"):
    return (status, None, {"error": {"code": code, "message": message}})


STUB_CLIENT_ID = "00000000-0000-4000-8000-0000000000aa"
STUB_TOKEN = base64.b64encode(bytes(range(32))).decode()


def _stub_client(phc, stub, **kwargs):
    return phc.PigeonholeClient(stub.origin, STUB_CLIENT_ID, "pht_stub", STUB_TOKEN, **kwargs)


def _delivered(phc, mid, type_, payload, client_id=STUB_CLIENT_ID):
    """A correctly encrypted delivered message, as the server would build it."""
    created_at = f"2026-11-25T12:00:{mid:02d}.000Z"
    aad = {"client_id": client_id, "created_at": created_at, "id": mid}
    body = phc.encrypt(base64.b64decode(STUB_TOKEN), type_, payload, aad)
    return dict(body, id=mid, type=type_, created_at=created_at)


def _clean_env(env=None) -> dict:
    """This process's environment without the PIGEONHOLE_* settings a command would pick up, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("PIGEONHOLE_OPERATOR_TOKEN", "PIGEONHOLE_ADMIN_TOKEN", "PIGEONHOLE_URL",
                             "PIGEONHOLE_CREDENTIALS", "PIGEONHOLE_INSECURE_HTTP")}
    full_env.update(env or {})
    return full_env


def _run(command: str, *args, env=None, timeout=30):
    """Run an installed console script (``pigeonhole-client``, ``pigeonhole-operator``), as a user would."""
    # stdin is never a terminal here, whatever runs pytest.
    return subprocess.run([str(console_script(command)), *map(str, args)], env=_clean_env(env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def _run_copied(script: Path, *args, env=None, timeout=30):
    """Run a single file the way someone who copied it would: ``python FILE ...`` from its directory."""
    return subprocess.run([sys.executable, script.name, *map(str, args)], cwd=script.parent, env=_clean_env(env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# The files themselves
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, allowed", [(CLIENT_PY, {"requests", "cryptography"}), (OPERATOR_PY, {"requests"})])
def test_single_files_use_only_the_stdlib_and_their_documented_deps(path, allowed):
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))  # Python >= 3.9 syntax
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", None)  # Python >= 3.10
    if stdlib is None:
        pytest.skip("needs Python 3.10+ to know the standard library's module names")
    extra = {m for m in imported if m not in stdlib and m != "__future__"}
    assert extra <= allowed, extra


def test_single_files_work_copied_into_a_project(server, tmp_path):
    """Without the package: the two files copied into a directory import as modules from there and
    run as scripts (register, send, list)."""
    project = tmp_path / "my_project"
    project.mkdir()
    client_copy = project / CLIENT_PY.name
    operator_copy = project / OPERATOR_PY.name
    client_copy.write_bytes(CLIENT_PY.read_bytes())
    operator_copy.write_bytes(OPERATOR_PY.read_bytes())

    where = subprocess.run([sys.executable, "-c", "import pigeonhole_client as c, pigeonhole_operator as o; "
                            "print(c.__file__); print(o.__file__)"], cwd=project, env=_clean_env(),
                           capture_output=True, text=True, timeout=30)
    assert where.returncode == 0, where.stderr
    assert [Path(p) for p in where.stdout.split()] == [client_copy, operator_copy]

    usage = _run_copied(client_copy, "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: pigeonhole_client.py"), usage.stdout
    creds = project / "creds.json"
    reg = _run_copied(client_copy, "register", "--url", server.origin, "--name", "copied", "--credentials", creds)
    assert reg.returncode == 0, reg.stderr
    client_id = reg.stdout.strip().split()[-1]
    sent = _run_copied(client_copy, "send", "--type", "status", "--payload", '{"ok": true}', "--credentials", creds)
    assert sent.returncode == 0 and json.loads(sent.stdout) == {"id": 1, "status": 201}, (sent.stdout, sent.stderr)
    listed = _run_copied(operator_copy, "--url", server.origin, "--json",
                         env={"PIGEONHOLE_OPERATOR_TOKEN": server.operator_token})
    assert listed.returncode == 0, listed.stderr
    assert {"id": client_id, "sent_head": 1} in [{"id": c["id"], "sent_head": c["sent_head"]}
                                                 for c in json.loads(listed.stdout)]


#: The listen loop's jitter draw that multiplies every wait by exactly 1.0.
NO_JITTER = lambda: 0.5  # noqa: E731


def test_jittered_intervals_stay_within_ten_percent_and_differ(phc):
    for n, base in enumerate(phc.backoff_schedule(12), start=1):
        draws = [phc.jittered_interval(base) for _ in range(500)]
        assert all(0.9 * base <= d <= 1.1 * base for d in draws), (n, min(draws), max(draws))
        assert len(set(draws)) > 100, n  # draws differ
    assert phc.jittered_interval(30, 0.0) == pytest.approx(27)
    assert phc.jittered_interval(30, 1.0) == pytest.approx(33)
    assert phc.jittered_interval(30, 0.5) == pytest.approx(30)
    assert phc.jittered_interval(30, 5.0) == pytest.approx(33)  # clamped


def test_listen_jitters_its_waits_but_keeps_retry_after_as_a_floor(phc):
    limited = (429, {"Retry-After": "20"}, {"error": {"code": "rate_limited", "message": "slow down"}})
    script = [(204,), (204,), limited, (204,)]
    for unit, expected in [(0.0, [2.7, 5.4, 20, 8.1]), (1.0, [3.3, 6.6, 20, 9.9])]:
        with Stub(poll=list(script)) as stub:
            sleep = Recorder()
            _stub_client(phc, stub).listen(lambda m: None, max_polls=5, sleep=sleep, jitter=lambda: unit)
            assert sleep.sleeps == pytest.approx(expected), unit  # never before the Retry-After


def test_backoff_schedule_and_next_interval(phc):
    assert phc.backoff_schedule(12) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 30, 30]
    assert phc.next_interval(3, got_messages=False) == 6
    assert phc.next_interval(27, got_messages=False) == 30
    assert phc.next_interval(30, got_messages=False) == 30
    assert phc.next_interval(30, got_messages=True) == 3
    assert phc.next_interval(12, got_messages=True) == 3


def test_format_vectors_round_trip(phc):
    """The library's encrypt/decrypt/canonical_aad reproduce every published format vector."""
    for v in json.loads(FORMAT_VECTORS.read_text(encoding="utf-8")):
        key = base64.b64decode(v["personal_token"])
        assert phc.canonical_aad(v["aad"]).decode() == v["aad_bytes"], v["description"]
        plain = phc.decrypt(key, v)
        assert plain == json.loads(v["plaintext"]), v["description"]
        body = phc.encrypt(key, plain["type"], plain["payload"], v["aad"], nonce=base64.b64decode(v["nonce"]))
        want = {"ciphertext": v["ciphertext"], "nonce": v["nonce"], "tag": v["tag"]}
        if v["aad"] is not None:
            want["aad"] = v["aad"]
        assert body == want, v["description"]
    with pytest.raises(ValueError):
        phc.canonical_aad({"x": 1.0})
    with pytest.raises(ValueError):
        phc.canonical_aad({"x": None})


# ---------------------------------------------------------------------------
# Library against the real server
# ---------------------------------------------------------------------------

def test_register_is_idempotent_per_fingerprint(phc, server):
    fp = f"pytest-ref-idem-{uuid.uuid4()}"
    first = phc.PigeonholeClient.register(server.origin, fp, name="idem")
    again = phc.register(server.origin + "/api/v1/", fp, name="renamed")  # the function form; either URL form
    assert first.created is True and again.created is False
    assert (again.client_id, again.api_token, again.personal_token) == \
        (first.client_id, first.api_token, first.personal_token)
    assert first.api_token not in repr(first) and first.personal_token not in repr(first)
    with pytest.raises(phc.ApiError) as e:
        phc.register(server.origin, "short")
    assert (e.value.status, e.value.code) == (422, "validation_failed")


def test_publish_poll_decrypt_ack(phc, server):
    creds, client = _new_client(phc, server, "receive")
    payloads = [{"text": "hello ✓"}, [1, 2, 3], None]
    for p in payloads:
        result = _publish(phc, server, [creds.client_id, creds.client_id], "greeting", p)
        assert result.recipients == 1 and result.publish_id
    messages = client.poll()
    assert [(m.id, m.type, m.payload) for m in messages] == [(i, "greeting", p) for i, p in enumerate(payloads, 1)]
    assert all(m.aad == {"client_id": creds.client_id, "created_at": m.created_at, "id": m.id} for m in messages)
    assert messages[0].created.tzinfo is not None
    assert [m.id for m in client.poll(limit=1)] == [1]
    assert [m.id for m in client.poll(cursor=2)] == [3]
    assert client.ack(messages[-1].id) == 3
    assert client.poll() == []
    assert client.ack(1) == 3  # never backwards


def test_wrong_credentials_raise_unauthorized(phc, server):
    creds, _ = _new_client(phc, server, "unauth")
    bad = phc.PigeonholeClient(server.origin, creds.client_id, "pht_" + "A" * 43, creds.personal_token)
    with pytest.raises(phc.ApiError) as e:
        bad.poll()
    assert (e.value.status, e.value.code) == (401, "unauthorized")


def test_send_201_then_same_body_200_same_id(phc, server):
    creds, client = _new_client(phc, server, "send")
    body = client.encrypt("status", {"battery": 87})
    assert body["aad"] == {"client_id": creds.client_id}
    assert len(base64.b64decode(body["nonce"])) == 12
    first, retry = client.send_body(body), client.send_body(body)
    assert (first.status, first.id, first.duplicate) == (201, 1, False)
    assert (retry.status, retry.id, retry.duplicate) == (200, 1, True)
    # Fresh nonce per message; aad may be omitted or carry more fields.
    assert client.encrypt("status", {})["nonce"] != client.encrypt("status", {})["nonce"]
    assert client.send("note", {"text": "café ✓"}, aad=None).id == 2
    assert client.send("note", [1], aad={"client_id": creds.client_id, "n": 3, "urgent": True, "x": "é"}).id == 3
    with pytest.raises(phc.ApiError) as e:  # aad.client_id must be our own
        client.send("note", {}, aad={"client_id": str(uuid.uuid4())})
    assert (e.value.status, e.value.code) == (422, "validation_failed")


def test_send_retries_the_same_body_after_a_lost_response(phc, server):
    """The first response is lost after the server stored the message: the retry
    with the same body is recognised (200, same id) instead of stored twice."""

    class LoseFirstSendResponse(requests.Session):
        lost = 0

        def request(self, method, url, *args, **kwargs):
            resp = super().request(method, url, *args, **kwargs)
            if url.endswith("/messages/send") and self.lost == 0:
                self.lost += 1
                raise requests.ConnectionError("connection reset (simulated, after the server stored it)")
            return resp

    sleep = Recorder()
    creds, client = _new_client(phc, server, "send-lost", session=LoseFirstSendResponse(), sleep=sleep)
    result = client.send("status", {"ok": True})
    assert (result.status, result.id) == (200, 1)
    assert len(sleep.sleeps) == 1 and 0.5 <= sleep.sleeps[0] <= 1.0  # 1 s, with jitter
    assert client.send("status", {"ok": True}).id == 2


def test_send_retries_5xx_with_the_same_body_but_not_4xx(phc):
    with Stub(send=[_error(502, "http_502"), (201, None, {"id": 7})]) as stub:
        sleep = Recorder()
        result = _stub_client(phc, stub, sleep=sleep).send("status", {"ok": True})
        assert (result.status, result.id) == (201, 7)
        bodies = stub.calls("POST", "/api/v1/messages/send")
        assert len(bodies) == 2 and bodies[0] == bodies[1]
        assert len(sleep.sleeps) == 1 and 0.5 <= sleep.sleeps[0] <= 1.0
    with Stub(send=[_error(500, "internal")] * 3) as stub:
        sleep = Recorder()
        with pytest.raises(phc.ApiError) as e:
            _stub_client(phc, stub, sleep=sleep, send_attempts=3).send("status", {})
        # 1 s, then 2 s, each with jitter (between half and all of it).
        assert e.value.status == 500 and len(sleep.sleeps) == 2
        assert 0.5 <= sleep.sleeps[0] <= 1.0 and 1.0 <= sleep.sleeps[1] <= 2.0
        assert len(stub.calls("POST", "/api/v1/messages/send")) == 3
    with Stub(send=[(503, {"Retry-After": "4"}, {"error": {"code": "unavailable", "message": "busy"}}),
                    (200, None, {"id": 7})]) as stub:
        sleep = Recorder()
        assert _stub_client(phc, stub, sleep=sleep).send("status", {}).id == 7
        assert len(sleep.sleeps) == 1 and 4 <= sleep.sleeps[0] <= 5  # Retry-After, not the 1 s backoff
    with Stub(send=[_error(422, "decryption_failed")]) as stub:
        with pytest.raises(phc.ApiError) as e:
            _stub_client(phc, stub, sleep=Recorder()).send("status", {})
        assert e.value.code == "decryption_failed" and len(stub.calls("POST", "/api/v1/messages/send")) == 1


def test_tampered_messages_raise_decryption_error(phc, server):
    creds, client = _new_client(phc, server, "tamper")
    other_creds, other = _new_client(phc, server, "tamper-other")
    _publish(phc, server, [creds.client_id], "secret", {"pin": 1234})
    raw = client.poll_raw()["messages"][0]
    assert client.decrypt(raw).payload == {"pin": 1234}

    def tampered(**changes):
        m = json.loads(json.dumps(raw))
        for k, v in changes.items():
            if k.startswith("aad_"):
                m["aad"][k[4:]] = v
            else:
                m[k] = v
        return m

    ct = bytearray(base64.b64decode(raw["ciphertext"]))
    ct[0] ^= 1
    cases = {
        "aad id moved": tampered(aad_id=2),
        "aad client_id swapped": tampered(aad_client_id=other_creds.client_id),
        "aad created_at changed": tampered(aad_created_at="2020-01-01T00:00:00.000Z"),
        # The envelope and aad agree, so only the tag can catch it.
        "moved to another position": tampered(id=2, aad_id=2),
        "ciphertext bit flipped": tampered(ciphertext=base64.b64encode(bytes(ct)).decode()),
        "tag garbled": tampered(tag="not base64!"),
        "aad removed": tampered(aad=None),
    }
    for what, m in cases.items():
        with pytest.raises(phc.DecryptionError):
            client.decrypt(m)
            pytest.fail(f"{what}: accepted")
    with pytest.raises(phc.DecryptionError):  # another client's copy: wrong recipient and wrong key
        other.decrypt(raw)
    with pytest.raises(phc.DecryptionError):  # the key-only decrypt also catches a changed aad
        phc.decrypt(base64.b64decode(creds.personal_token), tampered(aad_id=2))


def test_poll_and_listen_on_a_tampered_delivery(phc):
    good = _delivered(phc, 1, "greeting", {"text": "ok"})
    bad = dict(_delivered(phc, 2, "greeting", {"text": "evil"}), tag=_delivered(phc, 3, "x", 1)["tag"])
    page = {"messages": [good, bad], "next_cursor": 2}
    with Stub(poll=[(200, None, page), (200, None, page)]) as stub:
        client = _stub_client(phc, stub)
        with pytest.raises(phc.DecryptionError) as e:
            client.poll()
        assert e.value.message_id == 2
        got, invalid = [], []
        stats = client.listen(got.append, max_polls=1, sleep=Recorder(), jitter=NO_JITTER,
                              on_invalid=lambda raw, err: invalid.append(raw["id"]))
        assert [m.payload for m in got] == [{"text": "ok"}] and invalid == [2]
        assert stats.invalid == 1 and stats.messages == 1
        assert stub.calls("POST", "/api/v1/messages/ack") == [{"last_received_id": 2}]  # it can't block the queue


def test_poll_429_raises_rate_limited(phc, limited_server):
    _, client = _new_client(phc, limited_server, "limited")
    assert client.poll() == []
    with pytest.raises(phc.RateLimited) as e:
        client.poll()
    assert isinstance(e.value, phc.ApiError)
    assert (e.value.status, e.value.code) == (429, "rate_limited")
    assert isinstance(e.value.retry_after, int) and e.value.retry_after >= 1


def test_listen_honours_retry_after_from_the_server(phc, limited_server):
    _, client = _new_client(phc, limited_server, "limited-listen")
    sleep = Recorder()
    stats = client.listen(lambda m: None, max_polls=3, sleep=sleep, jitter=NO_JITTER)
    assert (stats.polls, stats.rate_limited) == (3, 2)
    # 204 -> wait 3; 429 -> wait Retry-After (about a minute at 1 poll/min), not the 6 s delay.
    assert sleep.sleeps[0] == 3 and len(sleep.sleeps) == 2
    assert sleep.sleeps[1] > 6


# ---------------------------------------------------------------------------
# The listen loop
# ---------------------------------------------------------------------------

def test_listen_receives_acks_after_handler_and_resets_backoff(phc, server):
    creds, client = _new_client(phc, server, "listen")
    received = []

    def handler(m):
        # Not acknowledged yet while the handler runs: a poll from the acked cursor still returns it.
        assert [x.id for x in client.poll()] == [m.id]
        received.append(m)

    sleep = Recorder({2: lambda: _publish(phc, server, [creds.client_id], "greeting", {"text": "during backoff"})})
    stats = client.listen(handler, max_polls=6, sleep=sleep, jitter=NO_JITTER)
    # empty: 3, empty: 6 (publish meanwhile), message: reset to 3, empty: 3, empty: 6, (last poll: no wait)
    assert sleep.sleeps == [3, 6, 3, 3, 6]
    assert [(m.id, m.type, m.payload) for m in received] == [(1, "greeting", {"text": "during backoff"})]
    assert (stats.polls, stats.messages, stats.cursor, stats.errors) == (6, 1, 1, 0)
    assert stats.sleeps == sleep.sleeps
    assert client.poll() == []  # acknowledged


def test_listen_stops_on_event_after_acking(phc, server):
    creds, client = _new_client(phc, server, "listen-stop")
    _publish(phc, server, [creds.client_id], "a", 1)
    _publish(phc, server, [creds.client_id], "b", 2)
    stop = threading.Event()
    got = []

    def handler(m):
        got.append(m.payload)
        stop.set()

    sleep = Recorder()
    stats = client.listen(handler, stop=stop, sleep=sleep, jitter=NO_JITTER)  # no max_polls: only the event ends it
    assert got == [1, 2] and stats.polls == 1 and sleep.sleeps == []
    assert client.poll() == []


def test_listen_full_page_polls_again_at_once(phc, server):
    creds, client = _new_client(phc, server, "listen-page")
    for i in range(3):
        _publish(phc, server, [creds.client_id], "n", i)
    got, sleep = [], Recorder()
    client.listen(lambda m: got.append(m.payload), limit=2, max_polls=3, sleep=sleep, jitter=NO_JITTER)
    # page of 2 (full): no wait; page of 1: reset to 3; empty: last poll.
    assert got == [0, 1, 2] and sleep.sleeps == [3]


def test_listen_backoff_caps_at_30_seconds(phc):
    with Stub() as stub:  # always 204
        sleep = Recorder()
        stats = _stub_client(phc, stub).listen(lambda m: None, max_polls=13, sleep=sleep, jitter=NO_JITTER)
        assert sleep.sleeps == phc.backoff_schedule(12) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 30, 30]
        assert stats.polls == 13


def test_listen_survives_5xx_and_honours_retry_after(phc):
    script = [
        _error(503, "http_503"),                                   # wait 3, delay -> 6
        (429, {"Retry-After": "40"}, {"error": {"code": "rate_limited", "message": "slow down"}}),  # wait 40
        _error(500, "internal"),                                   # wait 6, delay -> 9
        (429, {"Retry-After": "1"}, {"error": {"code": "rate_limited", "message": "slow down"}}),   # wait max(1, 9)
        (204,),                                                    # wait 9, delay -> 12
        (200, None, {"messages": [_delivered(phc, 1, "hello", {"n": 1})], "next_cursor": 1}),      # reset: wait 3
        (204,),                                                    # last poll
    ]
    with Stub(poll=script) as stub:
        got, sleep, waits = [], Recorder(), []
        stats = _stub_client(phc, stub).listen(lambda m: got.append(m.payload), max_polls=7, sleep=sleep, jitter=NO_JITTER,
                                               on_wait=lambda s, reason: waits.append(reason))
        assert sleep.sleeps == [3, 40, 6, 9, 9, 3]
        assert waits == ["error", "rate_limited", "error", "rate_limited", "empty", "messages"]
        assert got == [{"n": 1}] and (stats.errors, stats.rate_limited, stats.messages) == (2, 2, 1)
        assert stub.calls("POST", "/api/v1/messages/ack") == [{"last_received_id": 1}]
        polls = [p for m, p, _ in stub.requests if m == "GET"]
        assert "cursor=1" in polls[-1]  # continues after what it handled


def test_listen_honours_retry_after_on_503_unavailable(phc):
    unavailable = (503, {"Retry-After": "20"}, {"error": {"code": "unavailable", "message": "storage is unavailable"}})
    script = [
        (200, None, {"messages": [_delivered(phc, 1, "hello", {"n": 1})], "next_cursor": 1}),  # wait 3
        (204,),                                                # wait 3, delay -> 6
        unavailable,                                           # wait 20 (Retry-After), delay stays 6
        (503, None, {"error": {"code": "unavailable", "message": "no header"}}),  # wait 6, delay -> 9
        (429, {"Retry-After": "2"}, {"error": {"code": "rate_limited", "message": "slow down"}}),  # max(2, 9)
        (200, None, {"messages": [_delivered(phc, 2, "hello", {"n": 2})], "next_cursor": 2}),
    ]
    with Stub(poll=script) as stub:
        got, sleep, reasons = [], Recorder(), []
        stats = _stub_client(phc, stub).listen(lambda m: got.append(m.payload), max_polls=6, sleep=sleep, jitter=NO_JITTER,
                                               on_wait=lambda s, reason: reasons.append(reason))
        assert sleep.sleeps == [3, 3, 20, 6, 9]
        assert reasons == ["messages", "empty", "unavailable", "error", "rate_limited"]
        assert got == [{"n": 1}, {"n": 2}] and (stats.errors, stats.rate_limited) == (2, 1)
        polls = [p for m, p, _ in stub.requests if m == "GET"]
        # The poll after the 503 asks for the same cursor: nothing is skipped.
        assert all("cursor=1" in p for p in polls[1:]), polls
    with pytest.raises(phc.Unavailable) as e:
        with Stub(poll=[unavailable]) as stub:
            _stub_client(phc, stub).poll()
    assert (e.value.status, e.value.code, e.value.retry_after) == (503, "unavailable", 20)
    assert isinstance(e.value, phc.ApiError)


def test_listen_handler_error_acks_what_was_handled_and_propagates(phc):
    page = {"messages": [_delivered(phc, 1, "a", 1), _delivered(phc, 2, "b", 2)], "next_cursor": 2}
    with Stub(poll=[(200, None, page)]) as stub:
        def handler(m):
            if m.id == 2:
                raise RuntimeError("handler bug")

        with pytest.raises(RuntimeError, match="handler bug"):
            _stub_client(phc, stub).listen(handler, sleep=Recorder(), jitter=NO_JITTER)
        assert stub.calls("POST", "/api/v1/messages/ack") == [{"last_received_id": 1}]


def test_listen_survives_network_errors(phc):
    client = phc.PigeonholeClient(f"http://127.0.0.1:{_free_port()}", STUB_CLIENT_ID, "pht_x", STUB_TOKEN,
                                  timeout=2)
    sleep = Recorder()
    stats = client.listen(lambda m: None, max_polls=4, sleep=sleep, jitter=NO_JITTER)
    assert sleep.sleeps == [3, 6, 9] and stats.errors == 4
    with pytest.raises(phc.NetworkError):
        client.poll()


# ---------------------------------------------------------------------------
# publish: Idempotency-Key and retries
# ---------------------------------------------------------------------------

PUBLISHED = (202, None, {"publish_id": "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b", "recipients": 1})


def test_publish_retries_a_503_with_the_same_idempotency_key(phc):
    unavailable = (503, {"Retry-After": "1"}, {"error": {"code": "unavailable", "message": "storage is unavailable"}})
    with Stub(publish=[unavailable, PUBLISHED]) as stub:
        sleep = Recorder()
        result = phc.publish(stub.origin, "admin-token", [STUB_CLIENT_ID], "greeting", {"text": "hi"}, sleep=sleep)
        assert (result.publish_id, result.recipients) == ("9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b", 1)
        bodies = stub.calls("POST", "/api/v1/messages/publish")
        headers = stub.headers_of("POST", "/api/v1/messages/publish")
        assert len(bodies) == 2 and bodies[0] == bodies[1] == \
            {"to_client_ids": [STUB_CLIENT_ID], "type": "greeting", "payload": {"text": "hi"}}
        key = headers[0]["Idempotency-Key"]
        assert uuid.UUID(key) and headers[1]["Idempotency-Key"] == key == result.idempotency_key
        assert headers[0]["X-Admin-Token"] == "admin-token"
        assert len(sleep.sleeps) == 1 and 1 <= sleep.sleeps[0] <= 1.25  # Retry-After: 1, plus a little jitter

    # Each call is a new logical publish with a fresh key; a caller's key is sent as is.
    with Stub(publish=[PUBLISHED, PUBLISHED]) as stub:
        first = phc.publish(stub.origin, "admin-token", [STUB_CLIENT_ID], "greeting", 1)
        given = phc.publish(stub.origin, "admin-token", [STUB_CLIENT_ID], "greeting", 1,
                            idempotency_key="nightly:2026-11-25")
        sent = [h["Idempotency-Key"] for h in stub.headers_of("POST", "/api/v1/messages/publish")]
        assert sent == [first.idempotency_key, "nightly:2026-11-25"] and sent[0] != key
        assert given.idempotency_key == "nightly:2026-11-25"

    # Network errors are retried too, and the attempts are bounded.
    with Stub(publish=[_error(502, "http_502")] * 3) as stub:
        sleep = Recorder()
        with pytest.raises(phc.ApiError) as e:
            phc.publish(stub.origin, "admin-token", [STUB_CLIENT_ID], "t", 1, attempts=3, sleep=sleep)
        assert e.value.status == 502 and len(sleep.sleeps) == 2
        keys = {h["Idempotency-Key"] for h in stub.headers_of("POST", "/api/v1/messages/publish")}
        assert keys == {e.value.idempotency_key}  # one key for all three tries, and on the error
    sleep = Recorder()
    with pytest.raises(phc.NetworkError) as e:
        phc.publish(f"http://127.0.0.1:{_free_port()}", "admin-token", [STUB_CLIENT_ID], "t", 1, attempts=2,
                    timeout=2, sleep=sleep)
    assert len(sleep.sleeps) == 1 and e.value.idempotency_key


def test_publish_does_not_retry_a_422(phc):
    for code in ("validation_failed", "idempotency_key_reused"):
        with Stub(publish=[_error(422, code, "Idempotency-Key is not valid")]) as stub:
            sleep = Recorder()
            with pytest.raises(phc.ApiError) as e:
                phc.publish(stub.origin, "admin-token", [STUB_CLIENT_ID], "t", 1, sleep=sleep)
            assert (e.value.status, e.value.code) == (422, code)
            assert sleep.sleeps == [] and len(stub.calls("POST", "/api/v1/messages/publish")) == 1
    # A key the server would refuse is refused before anything is sent.
    with Stub() as stub:
        for bad in ("", "has space", "caf\u00e9", "k" * 256):
            with pytest.raises(ValueError):
                phc.publish(stub.origin, "admin-token", [STUB_CLIENT_ID], "t", 1, idempotency_key=bad)
        assert stub.requests == []


def test_cli_publish_retries_with_the_same_key_and_stops_on_422():
    unavailable = (503, {"Retry-After": "1"}, {"error": {"code": "unavailable", "message": "storage is unavailable"}})
    with Stub(publish=[unavailable, PUBLISHED]) as stub:
        run = _run(CLIENT_CLI, "publish", "--url", stub.origin, "--to", STUB_CLIENT_ID, "--type", "t",
                   "--payload", "1", "--idempotency-key", "job-42", env={"PIGEONHOLE_ADMIN_TOKEN": "admin-token"})
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["recipients"] == 1
        assert "retrying with the same Idempotency-Key" in run.stderr
        assert [h["Idempotency-Key"] for h in stub.headers_of("POST", "/api/v1/messages/publish")] == \
            ["job-42", "job-42"]
    with Stub(publish=[_error(422, "idempotency_key_reused", "different body")]) as stub:
        run = _run(CLIENT_CLI, "publish", "--url", stub.origin, "--to", STUB_CLIENT_ID, "--type", "t",
                   "--payload", "2", "--idempotency-key", "job-42", env={"PIGEONHOLE_ADMIN_TOKEN": "admin-token"})
        assert run.returncode == 1 and "idempotency_key_reused" in run.stderr, run.stderr
        assert "retrying" not in run.stderr
        assert len(stub.calls("POST", "/api/v1/messages/publish")) == 1
    bad = _run(CLIENT_CLI, "publish", "--url", "http://127.0.0.1:9", "--to", STUB_CLIENT_ID, "--type", "t",
               "--payload", "1", "--idempotency-key", "two words", env={"PIGEONHOLE_ADMIN_TOKEN": "x"})
    assert bad.returncode == 2 and "--idempotency-key" in bad.stderr


# ---------------------------------------------------------------------------
# pigeonhole_operator.py
# ---------------------------------------------------------------------------

def test_operator_lists_clients_with_status(phc, server):
    online_creds, online = _new_client(phc, server, "op-online")
    online.poll()  # an authenticated request: online
    offline_creds, _ = _new_client(phc, server, "op-offline")  # registered, never seen
    env = {"PIGEONHOLE_OPERATOR_TOKEN": server.operator_token}

    table = _run(OPERATOR_CLI, "--url", server.origin, env=env)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert rows["ID"].split() == ["ID", "NAME", "STATUS", "SENT", "LAST", "SEEN", "TAGS"]
    assert "op-online" in rows[online_creds.client_id] and " online " in rows[online_creds.client_id]
    assert " ".join(rows[online_creds.client_id].split()).endswith(("just now -", "s ago -"))
    assert rows[offline_creds.client_id].split()[-4:] == ["offline", "0", "never", "-"]

    as_json = _run(OPERATOR_CLI, "--url", server.origin, "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    clients = {c["id"]: c for c in json.loads(as_json.stdout)}
    assert clients[online_creds.client_id]["status"] == "online"
    assert clients[online_creds.client_id]["name"] == "op-online"
    assert clients[offline_creds.client_id]["status"] == "offline"
    assert clients[offline_creds.client_id]["last_seen_at"] is None
    assert clients[offline_creds.client_id]["sent_head"] == 0

    # The token from the flag; --status filters.
    offline_only = _run(OPERATOR_CLI, "--url", server.origin, "--json", "--status", "offline",
                        "--operator-token", server.operator_token)
    assert offline_only.returncode == 0, offline_only.stderr
    listed = json.loads(offline_only.stdout)
    assert {c["status"] for c in listed} == {"offline"}
    ids = {c["id"] for c in listed}
    assert offline_creds.client_id in ids and online_creds.client_id not in ids

    # Every page is followed: page size 1 gives the same list as one big page, in creation order.
    direct = requests.get(f"{server.base}/operators/clients", params={"limit": 1000},
                          headers={"X-Operator-Token": server.operator_token}, timeout=10).json()["clients"]
    assert len(direct) >= 2
    paged = _run(OPERATOR_CLI, "--url", server.origin, "--json", "--page-size", "1", env=env)
    assert paged.returncode == 0, paged.stderr
    assert [c["id"] for c in json.loads(paged.stdout)] == [c["id"] for c in direct]


def test_operator_errors_and_exit_codes(server):
    no_token = _run(OPERATOR_CLI, "--url", server.origin)
    assert no_token.returncode == 2 and "PIGEONHOLE_OPERATOR_TOKEN" in no_token.stderr
    wrong = _run(OPERATOR_CLI, "--url", server.origin, "--operator-token", "wrong-token")
    assert wrong.returncode == 1 and "unauthorized" in wrong.stderr
    down = _run(OPERATOR_CLI, "--url", f"http://127.0.0.1:{_free_port()}", "--operator-token", "x")
    assert down.returncode == 4, down.stderr


def test_operator_relative_time(opt):
    tool = opt
    from datetime import datetime, timezone
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)
    cases = {None: "never", "2026-11-25T11:59:58.500Z": "just now", "2026-11-25T11:59:18.000Z": "42 s ago",
             "2026-11-25T11:58:00.000Z": "2 min ago", "2026-11-25T09:00:00.000Z": "3 h ago",
             "2026-11-20T12:00:00.000Z": "5 d ago"}
    for ts, want in cases.items():
        assert tool.relative_time(ts, now) == want, ts


# ---------------------------------------------------------------------------
# pigeonhole_client.py command line
# ---------------------------------------------------------------------------

def test_cli_register_listen_send_publish(phc, server, tmp_path):
    creds_path = tmp_path / "conf" / "client.json"
    reg = _run(CLIENT_CLI, "register", "--url", server.origin, "--name", "cli", "--credentials", creds_path)
    assert reg.returncode == 0, reg.stderr
    assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600
    saved = json.loads(creds_path.read_text())
    client_id = saved["client_id"]
    assert reg.stdout.strip() == client_id
    assert saved["base_url"] == server.origin and len(saved["fingerprint"]) >= 32
    assert saved["api_token"] not in reg.stdout + reg.stderr
    assert saved["personal_token"] not in reg.stdout + reg.stderr

    # Again with the same file: the stored fingerprint is reused, so it's the same client.
    os.chmod(creds_path, 0o644)
    again = _run(CLIENT_CLI, "register", "--url", server.origin, "--credentials", creds_path)
    assert again.returncode == 0 and again.stdout.strip() == client_id, again.stderr
    assert "already registered" in again.stderr
    assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600
    other = _run(CLIENT_CLI, "register", "--url", server.origin, "--credentials", creds_path,
                 "--fingerprint", f"another-{uuid.uuid4()}")
    assert other.returncode == 2 and "--force" in other.stderr

    empty = _run(CLIENT_CLI, "listen", "--once", "--credentials", creds_path)
    assert empty.returncode == 3, empty.stderr

    pub = _run(CLIENT_CLI, "publish", "--url", server.origin, "--to", client_id, "--type", "greeting",
               "--payload", '{"text": "hi from the CLI ✓"}', env={"PIGEONHOLE_ADMIN_TOKEN": server.admin_token})
    assert pub.returncode == 0, pub.stderr
    assert json.loads(pub.stdout)["recipients"] == 1

    got = _run(CLIENT_CLI, "listen", "--once", "--json", "--credentials", creds_path)
    assert got.returncode == 0, got.stderr
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(m["id"], m["type"], m["payload"]) for m in lines] == [(1, "greeting", {"text": "hi from the CLI ✓"})]
    assert _run(CLIENT_CLI, "listen", "--once", "--credentials", creds_path).returncode == 3  # acked

    sent = _run(CLIENT_CLI, "send", "--type", "status", "--payload", '{"ok": true}', "--credentials", creds_path)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"id": 1, "status": 201}

    bad_json = _run(CLIENT_CLI, "send", "--type", "status", "--payload", "{nope", "--credentials", creds_path)
    assert bad_json.returncode == 2
    no_admin = _run(CLIENT_CLI, "publish", "--url", server.origin, "--to", client_id, "--type", "t",
                    "--payload", "1")
    assert no_admin.returncode == 2 and "PIGEONHOLE_ADMIN_TOKEN" in no_admin.stderr
    missing = _run(CLIENT_CLI, "listen", "--once", "--credentials", tmp_path / "nope.json")
    assert missing.returncode == 2 and "register" in missing.stderr


def test_cli_exit_codes_for_rate_limit_and_unreachable(phc, limited_server, tmp_path):
    creds_path = tmp_path / "limited.json"
    assert _run(CLIENT_CLI, "register", "--url", limited_server.origin, "--credentials", creds_path).returncode == 0
    assert _run(CLIENT_CLI, "listen", "--once", "--credentials", creds_path).returncode == 3
    limited = _run(CLIENT_CLI, "listen", "--once", "--credentials", creds_path)
    assert limited.returncode == 1 and "rate limited" in limited.stderr

    creds = phc.load_credentials(str(creds_path))
    down_path = phc.save_credentials(
        phc.Credentials(f"http://127.0.0.1:{_free_port()}", creds.client_id, creds.api_token,
                        creds.personal_token), str(tmp_path / "down.json"))
    down = _run(CLIENT_CLI, "listen", "--once", "--timeout", "2", "--credentials", down_path)
    assert down.returncode == 4, down.stderr



# ---------------------------------------------------------------------------
# Issue 8: plain http, Content-Type, rotate, delete, limits, escapes
# ---------------------------------------------------------------------------

NOT_LOOPBACK = "http://192.0.2.10:8080"  # TEST-NET-1: nothing answers, and nothing is tried


def _creds_body(client_id=STUB_CLIENT_ID, key_byte=1, token="A"):
    return {"client_id": client_id, "api_token": "pht_" + token * 43,
            "personal_token": base64.b64encode(bytes([key_byte]) * 32).decode()}


def test_plain_http_is_refused_unless_loopback_or_allowed(phc, opt):
    for mod in (phc, opt):
        for host in ("localhost", "LOCALHOST.", "127.0.0.1", "127.9.9.9", "::1", "[::1]"):
            assert mod.is_loopback_host(host), host
        for host in ("10.0.0.1", "192.168.1.10", "0.0.0.0", "::", "::ffff:127.0.0.1", "example.com",
                     "localhost.example.com", ""):
            assert not mod.is_loopback_host(host), host
        for url in ("http://127.0.0.1:8080", "http://localhost/api/v1", "http://[::1]:1", "https://192.0.2.10"):
            mod.check_transport(url)
        with pytest.raises(mod.InsecureTransportError) as e:
            mod.check_transport(NOT_LOOPBACK + "/api/v1")
        assert e.value.host == "192.0.2.10"
        mod.check_transport(NOT_LOOPBACK, insecure_http=True)
    assert "--insecure-http" in str(e.value) and "192.0.2.10" in str(e.value)

    # Refused before anything is sent: no connection to TEST-NET-1 is tried.
    with pytest.raises(phc.InsecureTransportError) as e:
        phc.PigeonholeClient(NOT_LOOPBACK, STUB_CLIENT_ID, "pht_x", STUB_TOKEN)
    assert "personal key" in str(e.value)
    with pytest.raises(phc.InsecureTransportError):
        phc.register(NOT_LOOPBACK, "fingerprint-123456")
    with pytest.raises(phc.InsecureTransportError):
        phc.publish(NOT_LOOPBACK, "admin", [STUB_CLIENT_ID], "t", 1)
    with pytest.raises(opt.InsecureTransportError):
        opt.list_clients(NOT_LOOPBACK, "op")
    with pytest.raises(opt.InsecureTransportError):
        opt.delete_client(NOT_LOOPBACK, "op", STUB_CLIENT_ID)
    assert issubclass(phc.InsecureTransportError, phc.PigeonholeError)

    # Allowed: the client is built; credentials registered with it remember it.
    client = phc.PigeonholeClient(NOT_LOOPBACK, STUB_CLIENT_ID, "pht_x", STUB_TOKEN, insecure_http=True)
    assert client.credentials.insecure_http is True
    creds = phc.Credentials(NOT_LOOPBACK, STUB_CLIENT_ID, "pht_x", STUB_TOKEN, insecure_http=True)
    assert phc.Credentials.from_dict(creds.to_dict()) == creds
    assert phc.PigeonholeClient.from_credentials(creds).insecure_http is True
    plain = phc.Credentials("http://127.0.0.1:1", STUB_CLIENT_ID, "pht_x", STUB_TOKEN)
    assert "insecure_http" not in plain.to_dict() and "pending_fingerprint" not in plain.to_dict()


def test_command_lines_refuse_plain_http_to_other_hosts(tmp_path):
    reg = _run(CLIENT_CLI, "register", "--url", NOT_LOOPBACK, "--credentials", tmp_path / "c.json")
    assert reg.returncode == 2, reg.stderr
    assert "--insecure-http" in reg.stderr and "192.0.2.10" in reg.stderr
    assert not (tmp_path / "c.json").exists()
    pub = _run(CLIENT_CLI, "publish", "--url", NOT_LOOPBACK, "--to", STUB_CLIENT_ID, "--type", "t",
               "--payload", "1", env={"PIGEONHOLE_ADMIN_TOKEN": "x"})
    assert pub.returncode == 2 and "--insecure-http" in pub.stderr, pub.stderr
    for args in ((), ("--json",), ("delete", STUB_CLIENT_ID, "--yes")):
        out = _run(OPERATOR_CLI, "--url", NOT_LOOPBACK, *args, "--operator-token", "x")
        assert out.returncode == 2, (args, out.stderr)
        assert "--insecure-http" in out.stderr, out.stderr


def test_every_post_says_content_type_json(phc, opt):
    page = {"messages": [_delivered(phc, 1, "t", 1)], "next_cursor": 1}
    with Stub(register=[(201, None, _creds_body(key_byte=0))], poll=[(200, None, page)],
              send=[(201, None, {"id": 1})], publish=[PUBLISHED],
              rotate=[(200, None, _creds_body(key_byte=2, token="B"))]) as stub:
        creds = phc.register(stub.origin, "fingerprint-123456", name="n")
        client = phc.PigeonholeClient.from_credentials(creds)
        client.listen(lambda m: None, max_polls=1, sleep=Recorder(), jitter=NO_JITTER)  # poll, then ack
        client.send("t", 1)
        phc.publish(stub.origin, "admin", [STUB_CLIENT_ID], "t", 1)
        client.rotate()
        posts = [(p, h) for (m, p, _), h in zip(stub.requests, stub.headers) if m == "POST"]
        assert [p for p, _ in posts] == ["/api/v1/clients/register", "/api/v1/messages/ack",
                                         "/api/v1/messages/send", "/api/v1/messages/publish",
                                         "/api/v1/clients/rotate"]
        for path, headers in posts:
            assert headers.get("Content-Type", "").split(";")[0] == "application/json", (path, headers)


def test_rotate_replaces_the_clients_credentials(phc):
    new = _creds_body(key_byte=9, token="B")
    with Stub(rotate=[(200, None, new), (200, None, _creds_body(key_byte=8, token="C")),
                      (200, None, _creds_body(client_id=str(uuid.uuid4())))]) as stub:
        client = _stub_client(phc, stub)
        got = client.rotate()
        assert (got.client_id, got.api_token, got.personal_token, got.fingerprint) == \
            (STUB_CLIENT_ID, new["api_token"], new["personal_token"], None)
        assert got.base_url == stub.origin and got.api_token not in repr(got)
        assert client.api_token == new["api_token"] and client.credentials == got
        headers = stub.headers_of("POST", "/api/v1/clients/rotate")
        assert headers[0]["Authorization"] == "Bearer pht_stub" and headers[0]["X-Client-Id"] == STUB_CLIENT_ID
        client.poll()  # the next request carries the new token
        assert stub.headers_of("GET", "/api/v1/messages/poll")[0]["Authorization"] == "Bearer " + new["api_token"]
        # Messages are now opened with the new key.
        key = base64.b64decode(new["personal_token"])
        aad = {"client_id": STUB_CLIENT_ID, "created_at": "2026-11-25T12:00:01.000Z", "id": 1}
        sealed = dict(phc.encrypt(key, "t", {"after": True}, aad), id=1, type="t", created_at=aad["created_at"])
        assert client.decrypt(sealed).payload == {"after": True}

        assert client.rotate(fingerprint="a-new-fingerprint-0001").fingerprint == "a-new-fingerprint-0001"
        assert stub.calls("POST", "/api/v1/clients/rotate") == [{}, {"fingerprint": "a-new-fingerprint-0001"}]
        before = client.api_token
        with pytest.raises(phc.ApiError) as e:  # an answer for another client is not taken
            client.rotate()
        assert e.value.code == "invalid_response" and client.api_token == before


def test_cli_rotate_completes_a_rotation_whose_answer_was_lost(phc, tmp_path):
    path = tmp_path / "client.json"
    fp = "the-original-fingerprint"
    lost = _error(502, "http_502", "bad gateway")
    with Stub(register=[(201, None, _creds_body(key_byte=1)), (200, None, _creds_body(key_byte=2, token="B"))],
              rotate=[lost], poll=[_error(401, "unauthorized")]) as stub:
        assert _run(CLIENT_CLI, "register", "--url", stub.origin, "--fingerprint", fp,
                    "--credentials", path).returncode == 0
        out = _run(CLIENT_CLI, "rotate", "--credentials", path)
        assert out.returncode == 0, out.stderr
        assert "checking whether the server rotated" in out.stderr and out.stdout.strip() == STUB_CLIENT_ID
        saved = json.loads(path.read_text())
        assert saved["api_token"] == "pht_" + "B" * 43 and "pending_fingerprint" not in saved
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stub.calls("POST", "/api/v1/clients/register")[-1]["fingerprint"] == fp

    # Neither the answer nor the check: the file remembers the rotation and its new
    # fingerprint, register refuses to guess, and the next rotate completes it.
    with Stub(rotate=[lost], poll=[_error(503, "http_503"), _error(401, "unauthorized")],
              register=[(200, None, _creds_body(key_byte=3, token="C"))]) as stub:
        phc.save_credentials(phc.Credentials(stub.origin, STUB_CLIENT_ID, "pht_" + "B" * 43,
                                             _creds_body(key_byte=2)["personal_token"], fingerprint=fp), str(path))
        out = _run(CLIENT_CLI, "rotate", "--new-fingerprint", "--credentials", path)
        assert out.returncode == 1 and "run `rotate` again" in out.stderr, out.stderr
        pending = json.loads(path.read_text())["pending_fingerprint"]
        assert pending != fp and stub.calls("POST", "/api/v1/clients/rotate") == [{"fingerprint": pending}]
        refused = _run(CLIENT_CLI, "register", "--url", stub.origin, "--credentials", path)
        assert refused.returncode == 2 and "rotate" in refused.stderr
        done = _run(CLIENT_CLI, "rotate", "--credentials", path)
        assert done.returncode == 0, done.stderr
        assert "completed an earlier rotation" in done.stderr
        saved = json.loads(path.read_text())
        assert saved["fingerprint"] == pending and saved["api_token"] == "pht_" + "C" * 43
        assert "pending_fingerprint" not in saved
        assert len(stub.calls("POST", "/api/v1/clients/rotate")) == 1

    # The old token still works: nothing changed, nothing pending.
    with Stub(rotate=[lost]) as stub:
        phc.save_credentials(phc.Credentials(stub.origin, STUB_CLIENT_ID, "pht_" + "C" * 43,
                                             _creds_body(key_byte=3)["personal_token"], fingerprint=fp), str(path))
        out = _run(CLIENT_CLI, "rotate", "--credentials", path)
        assert out.returncode == 1 and "nothing was changed" in out.stderr, out.stderr
        saved = json.loads(path.read_text())
        assert saved["api_token"] == "pht_" + "C" * 43 and "pending_fingerprint" not in saved
        bad = _run(CLIENT_CLI, "rotate", "--fingerprint", "short", "--credentials", path)
        assert bad.returncode == 2 and "--fingerprint" in bad.stderr


def test_operator_table_and_json_escape_control_and_format_characters(opt):
    evil = "evil\x1b[2J\x1b]0;pwned\x07\x9b31m\u202egpj.exe\u200b\U000e0041"
    row = {"id": STUB_CLIENT_ID, "name": evil, "created_at": "2026-11-25T12:00:00.000Z",
           "last_seen_at": None, "status": "offline"}
    raw = {"\x1b", "\x07", "\x9b", "\u202e", "\u200b", "\U000e0041"}
    table = opt.format_table([row])
    assert not raw & set(table), repr(table)
    assert "evil\\x1b[2J" in table and "\\u202egpj.exe" in table
    assert opt.printable("café ✓ 日本 \u00a0") == "café ✓ 日本 \u00a0"
    listing = (200, None, {"clients": [row]})
    with Stub(listing=[listing, listing]) as stub:
        out = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op")
        assert out.returncode == 0, out.stderr
        assert not raw & set(out.stdout) and "\\u202egpj.exe" in out.stdout
        out = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op", "--json")
        assert out.returncode == 0, out.stderr
        assert not raw & set(out.stdout), repr(out.stdout)
        assert json.loads(out.stdout)[0]["name"] == evil  # the same value, escaped as JSON


def test_operator_delete_against_a_stub(opt):
    with Stub(delete=[(204,), _error(404, "not_found", "no such client")]) as stub:
        out = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op", "delete", STUB_CLIENT_ID)
        assert out.returncode == 2 and "--yes" in out.stderr, out.stderr  # no terminal, no --yes
        out = _run(OPERATOR_CLI, "delete", "laptop", "--yes", "--url", stub.origin, "--operator-token", "op")
        assert out.returncode == 2 and "not a client id" in out.stderr
        assert stub.requests == []
        out = _run(OPERATOR_CLI, "delete", STUB_CLIENT_ID.upper(), "--yes", "--url", stub.origin,
                   env={"PIGEONHOLE_OPERATOR_TOKEN": "op"})
        assert out.returncode == 0 and out.stdout.strip() == f"deleted client {STUB_CLIENT_ID}", out.stderr
        with pytest.raises(opt.OperatorError) as e:
            opt.delete_client(stub.origin, "op", STUB_CLIENT_ID)
        assert (e.value.status, e.value.code) == (404, "not_found")
        assert [(m, p) for m, p, _ in stub.requests] == [("DELETE", f"/api/v1/operators/clients/{STUB_CLIENT_ID}")] * 2
        assert all(h["X-Operator-Token"] == "op" for h in stub.headers)
    assert opt.delete_question(STUB_CLIENT_ID, {"name": "lap\x1btop", "status": "online",
                                                "last_seen_at": None}).startswith(
        f'Delete client {STUB_CLIENT_ID} "lap\\x1btop" (online, last seen never)?')


# -- against the real server (needs POST /clients/rotate and DELETE /operators/clients/{id}) --

def test_rotate_keeps_unacknowledged_messages_readable(phc, server):
    fp = f"pytest-ref-rotate-{uuid.uuid4()}"
    creds = phc.register(server.origin, fp, name="rotate")
    client = phc.PigeonholeClient.from_credentials(creds)
    stale = phc.PigeonholeClient.from_credentials(creds)
    _publish(phc, server, [creds.client_id], "before", {"n": 1})

    new = client.rotate()
    assert new.client_id == creds.client_id
    assert (new.api_token, new.personal_token) != (creds.api_token, creds.personal_token)
    with pytest.raises(phc.ApiError) as e:
        stale.poll()
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    messages = client.poll()  # delivered before the rotation, opened with the new key
    assert [(m.id, m.type, m.payload) for m in messages] == [(1, "before", {"n": 1})]
    assert client.ack(1) == 1
    assert client.send("after", {"ok": True}).status == 201

    again = phc.register(server.origin, fp)  # the fingerprint returns the new credentials
    assert (again.created, again.api_token, again.personal_token) == (False, new.api_token, new.personal_token)

    new_fp = f"pytest-ref-rotate-new-{uuid.uuid4()}"
    newer = client.rotate(fingerprint=new_fp)
    assert newer.fingerprint == new_fp
    assert phc.register(server.origin, new_fp).api_token == newer.api_token
    stranger = phc.register(server.origin, fp)  # the old fingerprint no longer finds it
    assert stranger.created and stranger.client_id != creds.client_id


def test_cli_rotate_against_the_server(phc, server, tmp_path):
    path = tmp_path / "rot.json"
    assert _run(CLIENT_CLI, "register", "--url", server.origin, "--credentials", path).returncode == 0
    before = json.loads(path.read_text())
    _publish(phc, server, [before["client_id"]], "pending", {"k": "v"})
    out = _run(CLIENT_CLI, "rotate", "--credentials", path)
    assert out.returncode == 0, out.stderr
    after = json.loads(path.read_text())
    assert after["client_id"] == before["client_id"] and after["fingerprint"] == before["fingerprint"]
    assert after["api_token"] != before["api_token"] and after["personal_token"] != before["personal_token"]
    assert after["api_token"] not in out.stdout + out.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    got = _run(CLIENT_CLI, "listen", "--once", "--json", "--credentials", path)
    assert got.returncode == 0, got.stderr
    assert [json.loads(line)["payload"] for line in got.stdout.splitlines()] == [{"k": "v"}]

    out = _run(CLIENT_CLI, "rotate", "--new-fingerprint", "--credentials", path)
    assert out.returncode == 0, out.stderr
    latest = json.loads(path.read_text())
    assert latest["fingerprint"] != before["fingerprint"] and latest["fingerprint"] not in out.stdout + out.stderr
    again = _run(CLIENT_CLI, "register", "--url", server.origin, "--credentials", path)
    assert again.returncode == 0 and "already registered" in again.stderr, again.stderr
    assert json.loads(path.read_text())["api_token"] == latest["api_token"]


def test_operator_delete_revokes_a_client(phc, opt, server):
    keep, _ = _new_client(phc, server, "op-keep")
    gone_creds, gone = _new_client(phc, server, "op-gone")
    env = {"PIGEONHOLE_OPERATOR_TOKEN": server.operator_token}

    refused = _run(OPERATOR_CLI, "--url", server.origin, "delete", gone_creds.client_id, env=env)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert gone.poll() == []  # still there

    out = _run(OPERATOR_CLI, "--url", server.origin, "delete", gone_creds.client_id, "--yes", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"deleted client {gone_creds.client_id}"
    listed = _run(OPERATOR_CLI, "--url", server.origin, "--json", env=env)
    ids = {c["id"] for c in json.loads(listed.stdout)}
    assert gone_creds.client_id not in ids and keep.client_id in ids
    with pytest.raises(phc.ApiError) as e:
        gone.poll()
    assert e.value.status == 401

    again = _run(OPERATOR_CLI, "--url", server.origin, "delete", gone_creds.client_id, "--yes", env=env)
    assert again.returncode == 1 and "not_found" in again.stderr, again.stderr
    with pytest.raises(opt.OperatorError) as e:
        opt.delete_client(server.origin, server.operator_token, gone_creds.client_id)
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_register_is_rate_limited_except_with_the_admin_token(phc, start_local_server):
    srv = start_local_server(REGISTER_RATE_LIMIT=1, REGISTER_RATE_LIMIT_EXEMPT="")
    phc.register(srv.origin, f"pytest-ref-limit-{uuid.uuid4()}")
    with pytest.raises(phc.RateLimited) as e:
        phc.register(srv.origin, f"pytest-ref-limit-{uuid.uuid4()}")
    assert e.value.retry_after >= 1
    creds = phc.register(srv.origin, f"pytest-ref-limit-{uuid.uuid4()}", admin_token=srv.admin_token)
    assert creds.created


# ---------------------------------------------------------------------------
# Issue 9: what clients sent, read back by the admin
# ---------------------------------------------------------------------------

def _sender(phc, server, name="sender", n=3):
    """A new client that has sent ``{"n": 1}`` ... ``{"n": n}`` as type ``reply``."""
    creds, client = _new_client(phc, server, name)
    assert [client.send("reply", {"n": i}).id for i in range(1, n + 1)] == list(range(1, n + 1))
    return creds, client


def test_read_sent_pages_until_empty(phc, opt, server):
    creds, _ = _sender(phc, server)
    cid, admin = creds.client_id, server.admin_token
    pages, after = [], 0
    while True:
        page = phc.read_sent(server.origin, admin, cid, after=after, limit=1)
        if not page.messages:
            break
        assert len(page.messages) == 1 and page.next_after == page.messages[-1].id
        pages.append(page)
        after = page.next_after
    assert [p.messages[0].id for p in pages] == [1, 2, 3]
    for i, m in enumerate((p.messages[0] for p in pages), 1):
        assert (m.type, m.payload, m.aad) == ("reply", {"n": i}, {"client_id": cid})
        assert m.created.tzinfo is not None
        assert m.to_dict() == {"id": i, "type": "reply", "payload": {"n": i}, "aad": {"client_id": cid},
                               "created_at": m.created_at}
    # 204: an empty page that stays where it was.
    empty = phc.read_sent(server.origin + "/api/v1/", admin, cid, after=3)
    assert (empty.messages, empty.next_after) == ([], 3)
    whole = phc.read_sent(server.origin, admin, cid)
    assert [m.id for m in whole.messages] == [1, 2, 3] and whole.next_after == 3

    assert [m.id for m in phc.iter_sent(server.origin, admin, cid, limit=1)] == [1, 2, 3]
    assert [m.payload for m in phc.iter_sent(server.origin, admin, cid, after=2)] == [{"n": 3}]
    assert list(phc.iter_sent(server.origin, admin, cid, after=3)) == []

    # An unknown client is 404 not_found (not retried); a wrong token 401.
    sleep = Recorder()
    for unknown in (str(uuid.uuid4()), "laptop"):
        with pytest.raises(phc.ApiError) as e:
            phc.read_sent(server.origin, admin, unknown, sleep=sleep)
        assert (e.value.status, e.value.code) == (404, "not_found")
        with pytest.raises(phc.ApiError) as e:
            list(phc.iter_sent(server.origin, admin, unknown, follow=True, sleep=sleep))
        assert e.value.status == 404
    assert sleep.sleeps == []
    with pytest.raises(phc.ApiError) as e:
        phc.read_sent(server.origin, "wrong-admin-token", cid)
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    with pytest.raises(phc.InsecureTransportError):
        phc.read_sent("http://pigeonhole.example.com", admin, cid)

    # The operators' listing says how far each client got.
    listed = {c["id"]: c for c in opt.list_clients(server.origin, server.operator_token)}
    assert listed[cid]["sent_head"] == 3


def test_iter_sent_follow_picks_up_new_messages_on_the_backoff(phc, server):
    creds, client = _sender(phc, server, "follow")
    stop = threading.Event()
    waits = []
    sleep = Recorder({1: lambda: client.send("reply", {"n": 4}), 3: stop.set})
    got = [m.id for m in phc.iter_sent(server.origin, server.admin_token, creds.client_id, follow=True,
                                       stop=stop, sleep=sleep, on_wait=lambda s, r: waits.append(r))]
    assert got == [1, 2, 3, 4]
    # 204: 3 s (the 4th is sent meanwhile); the page resets the delay; then 3 s, 6 s, stop.
    assert sleep.sleeps == [3, 3, 6]
    assert waits == ["empty"] * 3


def test_read_sent_retries_and_follow_honours_retry_after_against_a_stub(phc):
    def page(*ids, next_after=None):
        return (200, None, {"messages": [{"id": i, "type": "reply", "payload": i, "aad": None,
                                          "created_at": "2026-11-25T12:00:00.000Z"} for i in ids],
                            "next_after": ids[-1] if next_after is None else next_after})

    unavailable = (503, {"Retry-After": "1"}, {"error": {"code": "unavailable", "message": "storage is unavailable"}})
    with Stub(sent=[unavailable, page(1, 2)]) as stub:
        sleep = Recorder()
        got = phc.read_sent(stub.origin, "admin-token", STUB_CLIENT_ID, after=0, limit=2, sleep=sleep)
        assert [m.id for m in got.messages] == [1, 2] and got.messages[0].aad is None
        assert len(sleep.sleeps) == 1 and 1 <= sleep.sleeps[0] <= 1.25
        paths = [p for m, p, _ in stub.requests]
        assert paths == [f"/api/v1/clients/{STUB_CLIENT_ID}/sent?after=0&limit=2"] * 2
        assert all(h["X-Admin-Token"] == "admin-token" for h in stub.headers)

    # A page that does not move forward is refused (no endless paging, nothing printed twice).
    for bad in (page(1, next_after=5), page(2, 1), page(0), (200, None, {"messages": [], "next_after": 0})):
        with Stub(sent=[bad]) as stub:
            with pytest.raises(phc.ApiError) as e:
                phc.read_sent(stub.origin, "admin-token", STUB_CLIENT_ID)
            assert e.value.code == "invalid_response", bad

    # --follow: 429 waits max(Retry-After, delay), a 502 backs off like an empty read, a page resets.
    limited = (429, {"Retry-After": "5"}, {"error": {"code": "rate_limited", "message": "slow down"}})
    with Stub(sent=[(204,), limited, _error(502, "http_502"), page(1), (204,), (204,)]) as stub:
        stop = threading.Event()
        reasons = []
        sleep = Recorder({5: stop.set})
        got = [m.id for m in phc.iter_sent(stub.origin, "admin-token", STUB_CLIENT_ID, follow=True, stop=stop,
                                           sleep=sleep, on_wait=lambda s, r: reasons.append(r))]
        assert got == [1]
        assert sleep.sleeps == [3, 6, 6, 3, 6]
        assert reasons == ["empty", "rate_limited", "error", "empty", "empty"]
        afters = [p.split("after=")[1] for m, p, _ in stub.requests]
        assert afters == ["0", "0", "0", "0", "1", "1"]


def test_cli_inbox(phc, server):
    creds, client = _sender(phc, server, "cli-inbox")
    cid = creds.client_id
    env = {"PIGEONHOLE_ADMIN_TOKEN": server.admin_token}

    out = _run(CLIENT_CLI, "inbox", cid, "--url", server.origin, "--json", "--limit", "1", env=env)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(m["id"], m["type"], m["payload"], m["aad"]) for m in lines] == \
        [(i, "reply", {"n": i}, {"client_id": cid}) for i in (1, 2, 3)]

    out = _run(CLIENT_CLI, "inbox", cid.upper(), "--after", "2", "--url", server.origin, env=env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and out.stdout.rstrip().endswith('] #3 reply: {"n":3}'), out.stdout

    unknown = _run(CLIENT_CLI, "inbox", str(uuid.uuid4()), "--url", server.origin, env=env)
    assert unknown.returncode == 1 and "not_found" in unknown.stderr, unknown.stderr
    not_uuid = _run(CLIENT_CLI, "inbox", "laptop", "--url", server.origin, env=env)
    assert not_uuid.returncode == 2 and "not a client id" in not_uuid.stderr
    no_token = _run(CLIENT_CLI, "inbox", cid, "--url", server.origin)
    assert no_token.returncode == 2 and "PIGEONHOLE_ADMIN_TOKEN" in no_token.stderr

    # --follow: prints what is there, picks up what comes, and Ctrl-C ends it with 0.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEONHOLE_")}
    full_env.update(env)
    proc = subprocess.Popen([str(console_script(CLIENT_CLI)), "inbox", cid, "--url", server.origin, "--follow",
                             "--json"], env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as in a terminal, even when this test
                            # runs as a background job (which ignores SIGINT,
                            # and a child would inherit that).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(30, proc.kill)  # a readline below never blocks for ever
    watchdog.start()
    try:
        got = [json.loads(proc.stdout.readline())["id"] for _ in range(3)]
        assert got == [1, 2, 3]
        client.send("reply", {"n": 4})
        line = json.loads(proc.stdout.readline())  # within the first 3 s step
        assert (line["id"], line["payload"]) == (4, {"n": 4})
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "--after 4" in err, err
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_inbox_escapes_what_clients_sent(phc):
    evil = "a\x1b[2J\x9b31m\u202eb\u200b"
    page = (200, None, {"messages": [{"id": 1, "type": "t\x07", "payload": {"text": evil}, "aad": None,
                                      "created_at": "2026-11-25T12:00:00.000Z"}], "next_after": 1})
    raw = {"\x1b", "\x07", "\x9b", "\u202e", "\u200b"}
    for as_json in (False, True):
        with Stub(sent=[page, (204,)]) as stub:
            out = _run(CLIENT_CLI, "inbox", STUB_CLIENT_ID, "--url", stub.origin, *(["--json"] if as_json else []),
                       env={"PIGEONHOLE_ADMIN_TOKEN": "admin-token"})
            assert out.returncode == 0, out.stderr
            assert not raw & set(out.stdout), repr(out.stdout)
            if as_json:
                assert json.loads(out.stdout)["payload"] == {"text": evil}
            else:
                assert "#1 t\\x07: " in out.stdout and "\\u202eb" in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# Issue 9: audiences (tags, everyone), delivery status, expiry
# ---------------------------------------------------------------------------

STATUS_ID = "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b"


def _status_body(recipients=2, counts=(2, 1, 0, 0, 0), state="done", **extra):
    delivered, acknowledged, expired, unknown, pending = counts
    body = {"publish_id": STATUS_ID, "type": "alarm", "created_at": "2026-11-25T12:00:00.000Z",
            "audience": {"to_tags": ["eu"]}, "expires_at": "2026-11-25T12:05:00.000Z", "recipients": recipients,
            "delivered": delivered, "acknowledged": acknowledged, "expired": expired, "unknown": unknown,
            "pending": pending, "state": state}
    body.update(extra)
    return body


def test_publish_body_names_exactly_one_audience(phc):
    ids = [STUB_CLIENT_ID]
    assert phc.publish_body("t", None, to_client_ids=ids) == {"to_client_ids": ids, "type": "t", "payload": None}
    assert phc.publish_body("t", 1, to_tags=["eu", "door-sensors", "eu"], ttl_secs=300) == \
        {"to_tags": ["eu", "door-sensors"], "type": "t", "payload": 1, "ttl_secs": 300}
    assert phc.publish_body("t", {}, to_all=True) == {"to_all": True, "type": "t", "payload": {}}
    for kwargs in [{}, {"to_client_ids": ids, "to_all": True}, {"to_tags": ["eu"], "to_all": True},
                   {"to_client_ids": ids, "to_tags": ["eu"]}, {"to_client_ids": []}, {"to_tags": []},
                   {"to_tags": ["EU"]}, {"to_tags": ["a b"]}, {"to_tags": [f"t{n}" for n in range(11)]},
                   {"to_tags": "eu"}, {"to_client_ids": STUB_CLIENT_ID},
                   {"to_all": True, "ttl_secs": 0}, {"to_all": True, "ttl_secs": 2592001},
                   {"to_all": True, "ttl_secs": 1.5}, {"to_all": True, "ttl_secs": True}]:
        with pytest.raises(ValueError):
            phc.publish_body("t", None, **kwargs)
    assert phc.publish_body("t", None, to_all=True, ttl_secs=2592000)["ttl_secs"] == 2592000
    # publish itself checks before sending anything (nothing listens on this port).
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ValueError, match="exactly one audience"):
        phc.publish(url, "admin", type="t", payload=None)
    with pytest.raises(ValueError, match="exactly one audience"):
        phc.publish(url, "admin", [STUB_CLIENT_ID], "t", None, to_all=True)
    with pytest.raises(ValueError, match="payload"):
        phc.publish(url, "admin", to_all=True, type="t")
    with pytest.raises(ValueError, match="type"):
        phc.publish(url, "admin", to_all=True, payload=1)


def test_publish_to_tags_and_everyone_against_a_stub(phc):
    tag_receipt = (202, None, {"publish_id": STATUS_ID, "recipients": None})
    with Stub(publish=[tag_receipt, tag_receipt, PUBLISHED]) as stub:
        r = phc.publish(stub.origin, "admin", type="alarm", payload="door open", to_tags=["eu"], ttl_secs=300)
        assert (r.publish_id, r.recipients) == (STATUS_ID, None)
        r = phc.publish(stub.origin, "admin", type="notice", payload=None, to_all=True)
        assert r.recipients is None
        # The old positional form still works.
        r = phc.publish(stub.origin, "admin", [STUB_CLIENT_ID], "greeting", {"text": "hi"})
        assert r.recipients == 1
        bodies = stub.calls("POST", "/api/v1/messages/publish")
        assert bodies == [
            {"to_tags": ["eu"], "type": "alarm", "payload": "door open", "ttl_secs": 300},
            {"to_all": True, "type": "notice", "payload": None},
            {"to_client_ids": [STUB_CLIENT_ID], "type": "greeting", "payload": {"text": "hi"}},
        ]
        assert all(h.get("Idempotency-Key") for h in stub.headers_of("POST", "/api/v1/messages/publish"))


def test_poll_and_listen_ack_next_cursor_past_expired_ids(phc, tmp_path):
    # Message 1, then ids 2 and 3 expired (next_cursor 3), then a page whose messages all expired.
    first = {"messages": [_delivered(phc, 1, "greeting", {"n": 1})], "next_cursor": 3}
    expired = {"messages": [], "next_cursor": 5}
    with Stub(poll=[(200, None, first), (200, None, expired)]) as stub:
        client = _stub_client(phc, stub)
        got, sleep = [], Recorder()
        stats = client.listen(lambda m: got.append(m.id), max_polls=3, sleep=sleep, jitter=NO_JITTER)
        assert got == [1]
        assert stub.calls("POST", "/api/v1/messages/ack") == [{"last_received_id": 3}, {"last_received_id": 5}]
        # After the page with a message: the 3 s step; after the expired-only page: at once; then 204 (last).
        assert sleep.sleeps == [3]
        assert (stats.polls, stats.messages, stats.cursor) == (3, 1, 5)
        polls = [p for m, p, _ in stub.requests if m == "GET"]
        assert "cursor=3" in polls[1] and "cursor=5" in polls[2], polls

    with Stub(poll=[(200, None, first), (200, None, expired), (204,)]) as stub:
        client = _stub_client(phc, stub)
        page = client.poll()
        assert [m.id for m in page] == [1] and page.next_cursor == 3
        page = client.poll(cursor=3)
        assert page == [] and page.next_cursor == 5  # empty, yet something to acknowledge
        page = client.poll(cursor=5)
        assert page == [] and page.next_cursor is None  # 204

    # --once on a page of expired ids only: acked, and "nothing new" (exit 3).
    with Stub(poll=[(200, None, expired)], register=[(201, None, _creds_body())]) as stub:
        creds_path = tmp_path / "c.json"
        reg = _run(CLIENT_CLI, "register", "--url", stub.origin, "--credentials", creds_path)
        assert reg.returncode == 0, reg.stderr
        out = _run(CLIENT_CLI, "listen", "--once", "--credentials", creds_path)
        assert out.returncode == 3, (out.stdout, out.stderr)
        assert stub.calls("POST", "/api/v1/messages/ack") == [{"last_received_id": 5}]

    # A poll answer without next_cursor, or with one below a message id, is refused.
    bad = [{"messages": []}, {"messages": [_delivered(phc, 4, "t", 1)], "next_cursor": 3}]
    with Stub(poll=[(200, None, b) for b in bad]) as stub:
        client = _stub_client(phc, stub)
        for _ in bad:
            with pytest.raises(phc.ApiError) as e:
                client.poll()
            assert e.value.code == "invalid_response"


def test_publish_status_and_every_recipient_against_a_stub(phc):
    row = lambda cid, mid, st: {"client_id": cid, "message_id": mid, "status": st}  # noqa: E731
    first = _status_body(3, (2, 1, 0, 1, 0), recipient_status=[row("a", 7, "acknowledged"), row("b", 3, "delivered")],
                         next_page_token="r2")
    second = _status_body(3, (2, 1, 0, 1, 0), recipient_status=[row("c", None, "unknown")])
    with Stub(status=[(200, None, _status_body()), (200, None, first), (200, None, second)]) as stub:
        s = phc.publish_status(stub.origin, "admin", STATUS_ID)
        assert (s.recipients, s.delivered, s.acknowledged, s.state) == (2, 2, 1, "done")
        assert s.audience == {"to_tags": ["eu"]} and s.expires_at == "2026-11-25T12:05:00.000Z"
        assert s.recipient_status is None and s.unacknowledged == 1 and not s.finished
        rows = list(phc.iter_recipient_status(stub.origin, "admin", STATUS_ID, limit=2))
        assert [(r.client_id, r.message_id, r.status) for r in rows] == \
            [("a", 7, "acknowledged"), ("b", 3, "delivered"), ("c", None, "unknown")]
        gets = [p for m, p, _ in stub.requests if m == "GET"]
        assert gets[0] == f"/api/v1/messages/publish/{STATUS_ID}"
        assert "recipients=1" in gets[1] and "limit=2" in gets[1] and "page_token" not in gets[1]
        assert "page_token=r2" in gets[2]
        assert all(h.get("X-Admin-Token") == "admin" for h in stub.headers_of("GET", "/api/v1/messages/publish/"))

    # While the audience is still being enumerated the last token comes back: the walk stops there.
    growing = _status_body(None, (1, 0, 0, 0, 0), "delivering", recipient_status=[row("a", 7, "delivered")],
                           next_page_token="r1")
    at_end = _status_body(None, (1, 0, 0, 0, 0), "delivering", recipient_status=[], next_page_token="r1")
    with Stub(status=[(200, None, growing), (200, None, at_end)]) as stub:
        rows = list(phc.iter_recipient_status(stub.origin, "admin", STATUS_ID))
        assert [r.client_id for r in rows] == ["a"]
        assert len(stub.calls("GET", "/api/v1/messages/publish/")) == 2

    # Done: every delivered copy acknowledged or expired (expired ones may or may not count as delivered).
    assert phc.PublishStatus(**{**_status_body(4, (2, 2, 1, 1, 0)), "type": "t"}).finished
    with Stub(status=[_error(404, "not_found", "no such publish")]) as stub:
        with pytest.raises(phc.ApiError) as e:
            phc.publish_status(stub.origin, "admin", STATUS_ID)
        assert (e.value.status, e.value.code) == (404, "not_found")


def test_operator_set_tags_and_tag_listing_against_a_stub(opt):
    listing = (200, None, {"clients": [{"id": STUB_CLIENT_ID, "name": "n", "created_at": "2026-11-25T12:00:00.000Z",
                                        "last_seen_at": None, "status": "offline", "sent_head": 0,
                                        "tags": ["door-sensors", "e\x1b[2Ju"]}]})
    with Stub(tags=[(200, None, {"id": STUB_CLIENT_ID, "tags": ["door-sensors", "eu"]}),
                    (200, None, {"id": STUB_CLIENT_ID, "tags": []}),
                    (200, None, {"id": STUB_CLIENT_ID, "tags": ["eu"]})],
              listing=[listing, listing]) as stub:
        assert opt.set_tags(stub.origin, "op", STUB_CLIENT_ID, ["eu", "door-sensors", "eu"]) == ["door-sensors", "eu"]
        assert opt.set_tags(stub.origin, "op", STUB_CLIENT_ID, []) == []
        assert stub.calls("PUT", f"/api/v1/operators/clients/{STUB_CLIENT_ID}/tags") == \
            [{"tags": ["eu", "door-sensors"]}, {"tags": []}]
        assert stub.headers_of("PUT", "/api/v1/operators/clients/")[0]["X-Operator-Token"] == "op"
        for bad in (["EU"], ["a b"], [f"t{n}" for n in range(21)], "eu"):
            with pytest.raises(ValueError):
                opt.set_tags(stub.origin, "op", STUB_CLIENT_ID, bad)
        with pytest.raises(ValueError):
            opt.list_clients(stub.origin, "op", tag="Bad Tag")
        assert opt.list_clients(stub.origin, "op", tag="eu")[0]["tags"] == ["door-sensors", "e\x1b[2Ju"]
        assert "tag=eu" in [p for m, p, _ in stub.requests if m == "GET"][0]

        # The command line: `tag` replaces, and the listing shows TAGS, escaped.
        out = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op", "tag", STUB_CLIENT_ID, "eu")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"client {STUB_CLIENT_ID} tags: eu"
        out = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op", "--tag", "eu")
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and "door-sensors,e\\x1b[2Ju" in out.stdout, out.stdout
        assert "TAGS" in out.stdout.splitlines()[0]
        before = len(stub.requests)
        bad = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op", "tag", STUB_CLIENT_ID, "EU")
        assert bad.returncode == 2, bad.stderr
        bad = _run(OPERATOR_CLI, "--url", stub.origin, "--operator-token", "op", "--tag", "no spaces")
        assert bad.returncode == 2, bad.stderr
        assert len(stub.requests) == before


def test_cli_publish_audiences_and_status_against_a_stub(tmp_path):
    tag_receipt = (202, None, {"publish_id": STATUS_ID, "recipients": None})
    row = {"client_id": STUB_CLIENT_ID, "message_id": 7, "status": "acknowledged"}
    with Stub(publish=[tag_receipt], status=[(200, None, _status_body()),
                                              (200, None, _status_body(recipient_status=[row]))]) as stub:
        env = {"PIGEONHOLE_ADMIN_TOKEN": "admin"}
        out = _run(CLIENT_CLI, "publish", "--url", stub.origin, "--to-tag", "eu,door-sensors", "--type", "alarm",
                   "--payload", '"door open"', "--ttl", "300", env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"publish_id": STATUS_ID, "recipients": None}
        assert stub.calls("POST", "/api/v1/messages/publish") == \
            [{"to_tags": ["eu", "door-sensors"], "type": "alarm", "payload": "door open", "ttl_secs": 300}]
        for args in (["--all", "--to", STUB_CLIENT_ID], ["--all", "--to-tag", "eu"], ["--to-tag", "EU"],
                     ["--all", "--ttl", "0"], []):
            bad = _run(CLIENT_CLI, "publish", "--url", stub.origin, "--type", "t", "--payload", "1", *args, env=env)
            assert bad.returncode == 2, (args, bad.stderr)
        assert len(stub.calls("POST", "/api/v1/messages/publish")) == 1

        out = _run(CLIENT_CLI, "status", "--url", stub.origin, STATUS_ID, "--recipients", env=env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "state     done" in lines and "audience  the clients tagged eu" in lines
        assert "delivered 2/2 · acknowledged 1/2 · expired 0 · unknown 0 · pending 0" in lines
        assert lines[-1].split() == [STUB_CLIENT_ID, "7", "acknowledged"]
        bad = _run(CLIENT_CLI, "status", "--url", stub.origin, "not-a-uuid", env=env)
        assert bad.returncode == 2, bad.stderr


def test_tags_audiences_and_delivery_status_on_the_server(phc, opt, server):
    (a_creds, a), (b_creds, b), (c_creds, c) = (_new_client(phc, server, n) for n in ("tag-a", "tag-b", "tag-c"))
    tag = f"py-{uuid.uuid4().hex[:8]}"  # the session's server is shared: a tag of this test's own
    assert opt.set_tags(server.origin, server.operator_token, a_creds.client_id, [tag, "eu"]) == sorted([tag, "eu"])
    assert opt.set_tags(server.origin, server.operator_token, b_creds.client_id, [tag]) == [tag]
    assert opt.set_tags(server.origin, server.operator_token, c_creds.client_id, ["us"]) == ["us"]
    tagged = opt.list_clients(server.origin, server.operator_token, tag=tag)
    assert {t["id"] for t in tagged} == {a_creds.client_id, b_creds.client_id}
    assert all(tag in t["tags"] for t in tagged)
    with pytest.raises(opt.OperatorError) as e:
        opt.set_tags(server.origin, server.operator_token, str(uuid.uuid4()), ["eu"])
    assert (e.value.status, e.value.code) == (404, "not_found")

    r = phc.publish(server.origin, server.admin_token, type="alarm", payload="door open", to_tags=[tag],
                    ttl_secs=600)
    assert r.recipients is None
    got = a.poll()
    assert [m.payload for m in got] == ["door open"]
    a.ack(got.next_cursor)
    assert [m.payload for m in b.poll()] == ["door open"]
    assert c.poll() == []

    s = phc.publish_status(server.origin, server.admin_token, r.publish_id)
    assert s.audience == {"to_tags": [tag]} and s.expires_at is not None
    assert (s.recipients, s.delivered, s.acknowledged, s.expired, s.unknown, s.pending, s.state) == \
        (2, 2, 1, 0, 0, 0, "done")
    assert s.unacknowledged == 1 and not s.finished
    rows = {r_.client_id: r_ for r_ in phc.iter_recipient_status(server.origin, server.admin_token, r.publish_id,
                                                                  limit=1)}
    assert set(rows) == {a_creds.client_id, b_creds.client_id}
    assert rows[a_creds.client_id].status == "acknowledged" and rows[b_creds.client_id].status == "delivered"
    assert rows[a_creds.client_id].message_id == got[0].id
    with pytest.raises(phc.ApiError) as e:
        phc.publish_status(server.origin, server.admin_token, str(uuid.uuid4()))
    assert (e.value.status, e.value.code) == (404, "not_found")


def test_an_expired_message_is_skipped_and_counted_expired(phc, server):
    creds, client = _new_client(phc, server, "expiry")
    short = phc.publish(server.origin, server.admin_token, [creds.client_id], "flash", 1, ttl_secs=1)
    time.sleep(2.2)
    lasting = phc.publish(server.origin, server.admin_token, [creds.client_id], "later", 2)
    got = client.poll()
    assert [(m.id, m.type) for m in got] == [(2, "later")], "id 1 expired; the next keeps its own id"
    assert got.next_cursor == 2
    client.ack(got.next_cursor)
    s = phc.publish_status(server.origin, server.admin_token, short.publish_id)
    assert (s.expired, s.acknowledged, s.state) == (1, 0, "done") and s.finished
    assert phc.publish_status(server.origin, server.admin_token, lasting.publish_id).acknowledged == 1
