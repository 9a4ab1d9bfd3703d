"""The docs work as written: docs/api.md and docs/encryption.md, run against the
real `pigeonhole-local` binary.

- The curl walk-through in docs/api.md runs, block by block, in one bash
  process with `set -euo pipefail`. Only the server address is changed (the
  server listens on a free port); the tokens are the ones the docs set. Every
  curl call is recorded by a thin `curl` wrapper on PATH (it adds `-D <file>`
  to capture the status line and headers) so that each step's status and output
  can be compared with what the docs say.
- The Python snippets run as written (api.md: only the base URL is changed;
  encryption.md: configured through the environment variables it documents).
- The published test vectors and worked examples decrypt with `cryptography`.

Code blocks are found by headings, info strings and step labels, so the docs
need no test markers.
"""
from __future__ import annotations

import ast
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from harness import start_server, stop_server
from docutil import DOC_ORIGIN, REPO, Block, blocks, curl_commands, doc_json_pattern, pattern_mismatches

SHELL_INFOS = {"sh", "bash", "shell", "console"}
FORMAT_VECTORS = REPO / "shared" / "tests" / "data" / "pigeonhole_format_vectors.json"
OPENAPI = REPO / "openapi.yaml"


def canonical(aad) -> bytes:
    """The canonical AAD bytes, as the issue and decisions.md define them."""
    if aad is None:
        return b""
    return json.dumps(aad, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def open_message(key: bytes, m: dict):
    sealed = base64.b64decode(m["ciphertext"], validate=True) + base64.b64decode(m["tag"], validate=True)
    return json.loads(AESGCM(key).decrypt(base64.b64decode(m["nonce"], validate=True), sealed, canonical(m["aad"])))


def one(items, what):
    assert len(items) == 1, f"expected exactly one {what}, found {len(items)}: {[getattr(i, 'where', i) for i in items]}"
    return items[0]


# ---------------------------------------------------------------------------
# The curl walk-through (docs/api.md "Walk-through with curl")
# ---------------------------------------------------------------------------

CURL_WRAPPER = r"""#!/usr/bin/env bash
# Test harness: records each curl call of the docs walk-through, then behaves
# exactly like curl (same stdout, same exit status).
n=$(( $(cat "$PH_LOG/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$PH_LOG/count"
d="$PH_LOG/$(printf %03d "$n")"
mkdir -p "$d"
printf '%s' "${PH_STEP:-}" > "$d/step"
for a in "$@"; do printf '%s\0' "$a"; done > "$d/argv"
"$PH_REAL_CURL" -D "$d/headers" "$@" > "$d/stdout"
rc=$?
echo "$rc" > "$d/rc"
cat "$d/stdout"
exit "$rc"
"""

# What the docs say each walk-through step's requests return (method, path, status).
EXPECTED_CALLS = {
    # api.md "POST /api/v1/clients/register": 201 for a new client.
    "3": [("POST", "/api/v1/clients/register", 201)],
    # api.md after step 3: "If you run it again, you get `200` and the same values."
    "3 (again)": [("POST", "/api/v1/clients/register", 200)],
    # api.md "POST /api/v1/messages/publish": **202**.
    "4": [("POST", "/api/v1/messages/publish", 202)],
    # api.md "GET /api/v1/messages/poll": **200** with the message.
    "5": [("GET", "/api/v1/messages/poll", 200)],
    # api.md step 6: "Ack, then poll again and get `204 No Content`"; ack is **200**.
    "6": [("POST", "/api/v1/messages/ack", 200), ("GET", "/api/v1/messages/poll", 204)],
    # api.md step 7: "# HTTP/1.1 201 Created ... {"id":1}".
    "7": [("POST", "/api/v1/messages/send", 201)],
    # api.md after step 7: "If you run the same `curl` again ... `200` with `{"id":1}`".
    "7 (again)": [("POST", "/api/v1/messages/send", 200)],
    # api.md "GET /api/v1/operators/clients": **200**; "GET /api/v1/clients/{client_id}/sent": **200**.
    "8": [("GET", "/api/v1/operators/clients", 200), ("GET", "/api/v1/clients/{id}/sent", 200)],
    # api.md step 9: register the phone (201), tag both clients (PUT .../tags: **200**), list by ?tag= (**200**).
    "9": [("POST", "/api/v1/clients/register", 201),
          ("PUT", "/api/v1/operators/clients/{id}/tags", 200),
          ("PUT", "/api/v1/operators/clients/{id}/tags", 200),
          ("GET", "/api/v1/operators/clients", 200)],
    # api.md "POST /api/v1/messages/publish" to a tag: **202** with recipients null.
    "10": [("POST", "/api/v1/messages/publish", 202)],
    # api.md step 11: the status, done at once on the local server: one **200**.
    "11": [("GET", "/api/v1/messages/publish/{id}", 200)],
    # api.md step 12: poll (**200**), ack (**200**), status with recipients (**200**).
    "12": [("GET", "/api/v1/messages/poll", 200), ("POST", "/api/v1/messages/ack", 200),
           ("GET", "/api/v1/messages/publish/{id}", 200)],
    # api.md "GET /health": **200** {"status":"ok"}.
    "13": [("GET", "/health", 200)],
    # api.md "Errors" example: a wrong token -> 401 unauthorized.
    "errors": [("GET", "/api/v1/messages/poll", 401)],
}


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def path_matches(template: str, path: str) -> bool:
    """An expected path (`{id}`, or an OpenAPI `{name}`, stands for one path segment) against a real one."""
    pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None


def calls_match(expected, actual) -> bool:
    """(step, method, path template, status) against (step, method, path, status)."""
    if expected is None or actual is None:
        return False
    return expected[:2] == actual[:2] and expected[3] == actual[3] and path_matches(expected[2], actual[2])


@dataclass
class Call:
    n: int
    step: str
    argv: list
    rc: int
    status: int | None
    headers: dict  # lower-case name -> value, final response
    stdout: str
    body_text: str | None  # None when the command discarded the body (-o /dev/null)

    @property
    def method(self) -> str:
        if "-X" in self.argv:
            return self.argv[self.argv.index("-X") + 1]
        return "POST" if ("-d" in self.argv or "--data" in self.argv) else "GET"

    @property
    def url(self) -> str:
        return next(a for a in self.argv if a.startswith("http://") or a.startswith("https://"))

    @property
    def path(self) -> str:
        return re.sub(r"^https?://[^/]+", "", self.url).split("?")[0]

    @property
    def request_json(self):
        for flag in ("-d", "--data"):
            if flag in self.argv:
                return json.loads(self.argv[self.argv.index(flag) + 1])
        return None

    @property
    def body(self):
        if not self.body_text:
            return None
        return json.loads(self.body_text)

    def describe(self) -> str:
        return f"call #{self.n} (step {self.step}) {self.method} {self.path} -> {self.status}"


@dataclass
class Walkthrough:
    steps: list  # [(key, Block, rerun-claim-or-None)]
    calls: list  # [Call]
    result: subprocess.CompletedProcess
    script: str
    server: object

    def calls_of(self, step: str) -> list:
        return [c for c in self.calls if c.step == step]

    def failure_context(self) -> str:
        return (f"bash exit {self.result.returncode}\n--- stderr ---\n{self.result.stderr[-4000:]}"
                f"\n--- stdout ---\n{self.result.stdout[-3000:]}\n--- server log ---\n{self.server.log_tail()}")


def walkthrough_blocks() -> list[Block]:
    found = [b for b in blocks("api.md") if b.under(r"walk-?through") and b.info in SHELL_INFOS]
    assert found, "docs/api.md: no ```sh blocks under a 'Walk-through' heading"
    return found


def exported_vars(code: str) -> dict:
    out = {}
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            for w in words[1:]:
                if "=" in w:
                    k, v = w.split("=", 1)
                    out[k] = v
    return out


def rerun_claim(block: Block):
    """The "run it again" sentence right after a block, if any: what to rerun and what it should give."""
    para = block.trail.split("\n\n")[0]
    if not re.search(r"\brun\b.*\bagain\b", para, re.S):
        return None
    if "`curl`" in para:  # "If you run the same `curl` again": only the curl command, same body
        code = curl_commands(block.code)[-1][0]
    else:
        code = block.code
    status = re.search(r"`(\d{3})`", para)
    body = re.search(r"`(\{.*?\})`", para)
    return {
        "text": " ".join(para.split()),
        "code": code,
        "status": int(status.group(1)) if status else None,
        "body": body.group(1) if body else None,
        "same_values": "same values" in para,
    }


def read_calls(log_dir: Path) -> list[Call]:
    calls = []
    for d in sorted(p for p in log_dir.iterdir() if p.is_dir()):
        argv = (d / "argv").read_bytes().decode().split("\0")[:-1]
        stdout = (d / "stdout").read_text() if (d / "stdout").exists() else ""
        rc = int((d / "rc").read_text()) if (d / "rc").exists() else -1
        status, headers = None, {}
        raw_headers = (d / "headers").read_text(errors="replace") if (d / "headers").exists() else ""
        for line in raw_headers.splitlines():
            line = line.rstrip("\r")
            if line.startswith("HTTP/"):
                status, headers = int(line.split()[1]), {}
            elif ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "-o" in argv or "--output" in argv:
            body_text = None
        elif "-i" in argv or "--include" in argv:
            parts = re.split(r"\r?\n\r?\n", stdout)
            # skip every header block (e.g. a 100 Continue before the final response)
            while len(parts) > 1 and parts[0].startswith("HTTP/"):
                head, parts = parts[0], parts[1:]
                if not re.match(r"HTTP/\S+ 1\d\d", head):
                    break
            body_text = "\n\n".join(parts)
        else:
            body_text = stdout
        calls.append(Call(int(d.name), (d / "step").read_text(), argv, rc, status, headers, stdout, body_text))
    return calls


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    missing = [t for t in ("bash", "curl", "jq") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the docs/api.md walk-through needs {missing} on PATH "
                    "(e.g. `apt-get install -y curl jq`)", pytrace=False)
    wblocks = walkthrough_blocks()
    start = one([b for b in wblocks if re.search(r"cargo run\b.*pigeonhole-local", b.code)],
                "walk-through block that starts the server (`cargo run ... pigeonhole-local`)")
    server_env = exported_vars(start.code)
    assert {"ADMIN_TOKEN", "OPERATOR_TOKENS"} <= set(server_env), \
        f"{start.where}: expected `export ADMIN_TOKEN=... OPERATOR_TOKENS=...`, found {server_env}"
    assert any(DOC_ORIGIN in b.code for b in wblocks), f"walk-through never uses {DOC_ORIGIN}"

    tmp = tmp_path_factory.mktemp("walkthrough")
    # A fresh server, configured the way step 1 configures it: "a new user".
    srv = start_server(tmp / "server", server_env["ADMIN_TOKEN"], server_env["OPERATOR_TOKENS"].split(",")[0])
    try:
        bindir = tmp / "bin"
        bindir.mkdir()
        (bindir / "curl").write_text(CURL_WRAPPER)
        (bindir / "curl").chmod(0o755)
        # Step 7 runs `python3 -` and needs `cryptography`: use the interpreter running pytest.
        (bindir / "python3").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        (bindir / "python3").chmod(0o755)
        log_dir = tmp / "calls"
        log_dir.mkdir()
        workdir = tmp / "shell"
        workdir.mkdir()

        steps = []
        parts = ["set -euo pipefail"]
        for b in wblocks:
            if b is start:
                continue  # step 1 starts the server: the fixture did that
            key = b.step_key or f"block@{b.line}"
            claim = rerun_claim(b)
            steps.append((key, b, claim))
            parts.append(_step_script(key, b.code, srv.origin))
            if claim:
                parts.append(_step_script(f"{key} (again)", claim["code"], srv.origin))
        script = "\n".join(parts) + "\n"

        env = {
            # bin first: the recording curl and python3.
            "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]),
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "PH_LOG": str(log_dir),
            "PH_REAL_CURL": shutil.which("curl"),
        }
        try:
            result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True,
                                    text=True, timeout=30)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the walk-through did not finish within 30 s\n--- stderr ---\n{e.stderr}\n"
                        f"--- server log ---\n{srv.log_tail()}", pytrace=False)
        yield Walkthrough(steps, read_calls(log_dir), result, script, srv)
    finally:
        stop_server(srv)


def _step_script(key: str, code: str, origin: str) -> str:
    # The only change to the docs' code: the server address.
    code = code.replace(DOC_ORIGIN, origin)
    return textwrap.dedent(f"""\
        export PH_STEP={shlex.quote(key)}
        printf '=== step %s\\n' "$PH_STEP" >&2
        """) + code


def test_walkthrough_runs_to_the_end(walkthrough):
    assert walkthrough.result.returncode == 0, walkthrough.failure_context()


def test_walkthrough_step1_with_tokens_unset(tmp_path):
    """Step 1: "leave them unset. If unset, the server generates them, prints
    `admin token: …` and `operator token: …`, and keeps them in `./data/secrets.json`"."""
    start = one([b for b in walkthrough_blocks() if re.search(r"cargo run\b.*pigeonhole-local", b.code)],
                "server start block")
    assert "admin token:" in start.lead and "operator token:" in start.lead and "./data/secrets.json" in start.lead
    srv = start_server(tmp_path, admin_token=None, operator_token=None, default_config=True)
    try:
        printed = dict(line.split(": ", 1) for line in srv.stdout_lines if ": " in line)
        assert {"admin token", "operator token"} <= set(printed), srv.stdout_lines
        secrets = tmp_path / "data" / "secrets.json"
        assert secrets.is_file(), f"no {secrets}"
        assert printed["admin token"] in secrets.read_text() and printed["operator token"] in secrets.read_text()
        r = requests.post(f"{srv.base}/messages/publish", headers={"X-Admin-Token": printed["admin token"]},
                          json={"to_client_ids": [str(uuid.uuid4())], "type": "t", "payload": None}, timeout=10)
        assert r.status_code == 202, r.text
        r = requests.get(f"{srv.base}/operators/clients",
                         headers={"X-Operator-Token": printed["operator token"]}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        stop_server(srv)


def test_walkthrough_statuses_are_as_documented(walkthrough):
    expected = []
    for key, _, claim in walkthrough.steps:
        for step in [key] + ([f"{key} (again)"] if claim else []):
            expected += [(step, m, p, s) for (m, p, s) in EXPECTED_CALLS.get(step, [])]
    actual = [(c.step, c.method, c.path, c.status) for c in walkthrough.calls]
    problems = []
    unknown = sorted({c.step for c in walkthrough.calls} - set(EXPECTED_CALLS))
    if unknown:
        problems.append(f"steps with curl calls the test has no expectation for: {unknown}")
    where = {key: block.where for key, block, _ in walkthrough.steps}
    for i in range(max(len(expected), len(actual))):
        e = expected[i] if i < len(expected) else None
        a = actual[i] if i < len(actual) else None
        if not calls_match(e, a):
            step = (e or a)[0]
            problems.append(f"curl call #{i + 1} ({where.get(step.split(' (again)')[0], '?')}): "
                            f"docs say {e}, observed {a}")
    assert not problems, "\n".join(problems) + "\n" + walkthrough.failure_context()


def test_walkthrough_output_matches_doc_comments(walkthrough):
    """Each `# ...` line after a curl command in the docs is what that command prints."""
    problems, checked = [], 0
    for key, block, _ in walkthrough.steps:
        calls = walkthrough.calls_of(key)
        for idx, (cmd, comments) in enumerate(curl_commands(block.code)):
            for line_index, comment in comments:
                where = f"{block.line_of(line_index)} (step {key}) `# {comment}`"
                if idx >= len(calls):
                    problems.append(f"{where}: curl #{idx + 1} of the block never ran")
                    continue
                call = calls[idx]
                m_status = re.match(r"^(?:HTTP/\S+ )?(\d{3})\b", comment)
                if m_status:
                    checked += 1
                    if call.status != int(m_status.group(1)):
                        problems.append(f"{where}: status {call.status}")
                    if re.fullmatch(r"\d{3}", comment) and call.stdout.strip() != comment:
                        problems.append(f"{where}: printed {call.stdout.strip()!r}")
                    status_line = re.match(r"^(HTTP/\S+ \d{3}[^.]*?)\s*(\.\.\.|…|$)", comment)
                    if status_line and not call.stdout.startswith(status_line.group(1)):
                        problems.append(f"{where}: printed status line {call.stdout.splitlines()[:1]}")
                m_json = re.search(r"[{\[].*[}\]]\s*$", comment)
                if m_json and not comment.startswith("..."):
                    checked += 1
                    try:
                        pattern = doc_json_pattern(m_json.group(0))
                    except json.JSONDecodeError as e:
                        problems.append(f"{where}: not JSON even with … as wildcards ({e})")
                        continue
                    try:
                        body = call.body
                    except json.JSONDecodeError:
                        problems.append(f"{where}: response is not JSON: {call.body_text!r}")
                        continue
                    for p in pattern_mismatches(pattern, body):
                        problems.append(f"{where}: {p}")
    assert checked >= 5, f"only {checked} documented outputs found in the walk-through"
    assert not problems, "\n".join(problems)


def test_walkthrough_rerun_claims(walkthrough):
    claims = [(key, claim) for key, _, claim in walkthrough.steps if claim]
    assert {k for k, _ in claims} >= {"3", "7"}, f"expected 'run it again' notes after steps 3 and 7, got {claims}"
    problems = []
    for key, claim in claims:
        first, again = walkthrough.calls_of(key), walkthrough.calls_of(f"{key} (again)")
        if not again:
            problems.append(f"step {key} (again) made no curl call")
            continue
        last = again[-1]
        if claim["status"] is not None and last.status != claim["status"]:
            problems.append(f"step {key}: docs say {claim['text']!r}; got {last.status}")
        if claim["body"]:
            for p in pattern_mismatches(doc_json_pattern(claim["body"]), last.body):
                problems.append(f"step {key} (again): {p}")
        if claim["same_values"] and first and first[-1].body != last.body:
            problems.append(f"step {key}: docs say the same values; first {first[-1].body}, again {last.body}")
    assert not problems, "\n".join(problems)


def test_walkthrough_content(walkthrough):
    """What the steps returned is right in substance, not just in status."""
    reg = walkthrough.calls_of("3")[0].body
    assert re.fullmatch(r"pht_[A-Za-z0-9_-]{43}", reg["api_token"]), reg
    key = base64.b64decode(reg["personal_token"], validate=True)
    assert len(key) == 32
    uuid.UUID(reg["client_id"])

    publish = walkthrough.calls_of("4")[0]
    sent = publish.request_json
    assert publish.body["recipients"] == 1
    uuid.UUID(publish.body["publish_id"])

    poll = walkthrough.calls_of("5")[0].body
    (m,) = poll["messages"]
    assert m["aad"] == {"client_id": reg["client_id"], "created_at": m["created_at"], "id": m["id"]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["created_at"]), m["created_at"]
    assert open_message(key, m) == {"type": sent["type"], "payload": sent["payload"]}
    assert m["type"] == sent["type"] and poll["next_cursor"] == m["id"]

    assert walkthrough.calls_of("6")[0].body == {"cursor": m["id"]}

    clients = walkthrough.calls_of("8")[0].body["clients"]
    mine = one([c for c in clients if c["id"] == reg["client_id"]], "listed walk-through client")
    assert mine["name"] == "laptop" and mine["status"] == "online" and mine["last_seen_at"], mine

    err = walkthrough.calls_of("errors")[0]
    assert err.body["error"]["code"] == "unauthorized"
    assert err.headers.get("content-type", "").startswith("application/json")


def test_walkthrough_tags_publish_to_a_tag_and_status(walkthrough):
    """Steps 9-12: the tags are replaced and sorted, the tag publish reaches both tagged clients,
    its status counts them, and the recipient list shows who acknowledged."""
    laptop = walkthrough.calls_of("3")[0].body["client_id"]
    register, tag_laptop, tag_phone, listing = walkthrough.calls_of("9")
    phone = register.body["client_id"]
    assert tag_laptop.request_json == {"tags": ["eu", "door-sensors"]}
    assert tag_laptop.body == {"id": laptop, "tags": ["door-sensors", "eu"]}
    assert tag_phone.body == {"id": phone, "tags": ["door-sensors", "eu"]}, "duplicates folded"
    assert {c["id"] for c in listing.body["clients"]} == {laptop, phone}
    assert all(c["tags"] == ["door-sensors", "eu"] for c in listing.body["clients"])

    (publish,) = walkthrough.calls_of("10")
    assert publish.request_json["to_tags"] == ["eu"] and publish.request_json["ttl_secs"] == 3600
    assert publish.body["recipients"] is None
    publish_id = publish.body["publish_id"]
    uuid.UUID(publish_id)

    (status,) = walkthrough.calls_of("11")
    s = status.body
    assert s["publish_id"] == publish_id and s["audience"] == {"to_tags": ["eu"]} and s["type"] == "alarm"
    assert s["expires_at"] is not None
    assert (s["recipients"], s["delivered"], s["acknowledged"], s["expired"], s["unknown"], s["pending"],
            s["state"]) == (2, 2, 0, 0, 0, 0, "done"), s

    poll, ack, recipients = walkthrough.calls_of("12")
    (m,) = poll.body["messages"]
    assert (m["id"], m["type"], poll.body["next_cursor"]) == (2, "alarm", 2)
    assert ack.request_json == {"last_received_id": 2} and ack.body == {"cursor": 2}
    r = recipients.body
    assert (r["delivered"], r["acknowledged"], r["state"]) == (2, 1, "done"), r
    assert "next_page_token" not in r, r
    rows = {row["client_id"]: row for row in r["recipient_status"]}
    assert rows == {laptop: {"client_id": laptop, "message_id": 2, "status": "acknowledged"},
                    phone: {"client_id": phone, "message_id": 1, "status": "delivered"}}


def _openapi():
    return yaml.safe_load(OPENAPI.read_text())


def _resolve(spec, node):
    while isinstance(node, dict) and "$ref" in node and len(node) == 1:
        target = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _openapi_path(spec, path: str) -> str:
    """The `paths` key of openapi.yaml that a real path falls under (exact first, then templates)."""
    if path in spec["paths"]:
        return path
    return next((p for p in spec["paths"] if "{" in p and path_matches(p, path)), path)


def test_walkthrough_responses_match_openapi(walkthrough):
    from openapi_schema_validator import OAS31Validator

    spec = _openapi()
    problems = []
    for c in walkthrough.calls:
        op = spec["paths"].get(_openapi_path(spec, c.path), {}).get(c.method.lower())
        if op is None:
            problems.append(f"{c.describe()}: openapi.yaml has no {c.method} {c.path}")
            continue
        resp = _resolve(spec, op["responses"].get(str(c.status)))
        if resp is None:
            problems.append(f"{c.describe()}: status not listed in openapi.yaml")
            continue
        content = (resp.get("content") or {}).get("application/json")
        if content is None:
            if c.body_text:
                problems.append(f"{c.describe()}: openapi.yaml has no body but got {c.body_text!r}")
            continue
        if not c.headers.get("content-type", "").startswith("application/json"):
            problems.append(f"{c.describe()}: Content-Type {c.headers.get('content-type')!r}")
        if c.body_text is None:
            continue  # the command discarded the body
        schema = dict(content["schema"], components=spec["components"])
        validator = OAS31Validator(schema, format_checker=OAS31Validator.FORMAT_CHECKER)
        for err in validator.iter_errors(c.body):
            problems.append(f"{c.describe()}: {err.message} at {list(err.absolute_path)}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# docs/api.md "A few lines of Python"
# ---------------------------------------------------------------------------

class _StopSnippet(BaseException):
    """Raised from the patched time.sleep to end the snippet's endless poll loop."""


def test_api_md_python_snippet(server, monkeypatch, capsys):
    block = one([b for b in blocks("api.md") if b.info == "python" and b.under(r"python")],
                "```python block in the Python section of api.md")
    assert DOC_ORIGIN in block.code, f"{block.where}: expected the base URL {DOC_ORIGIN}"
    code = block.code.replace(DOC_ORIGIN, server.origin)
    ns: dict = {"__name__": "__main__"}
    sleeps, published = [], []

    def fake_sleep(seconds):
        # The snippet loops for ever (poll, back off, poll again). The first sleep
        # follows a 204: publish a message then. The second follows a processed 200.
        sleeps.append(seconds)
        if len(sleeps) == 1:
            r = requests.post(f"{server.base}/messages/publish", headers={"X-Admin-Token": server.admin_token},
                              json={"to_client_ids": [ns["reg"]["client_id"]], "type": "greeting",
                                    "payload": {"text": "hello from the test", "n": 1}}, timeout=10)
            assert r.status_code == 202, r.text
            published.append(r.json())
            return
        raise _StopSnippet

    monkeypatch.setattr(time, "sleep", fake_sleep)
    try:
        exec(compile(code, block.where, "exec"), ns)
    except _StopSnippet:
        pass
    except requests.HTTPError as e:
        pytest.fail(f"{block.where}: the snippet's {e.request.method} {e.request.path_url} got "
                    f"{e.response.status_code} {e.response.text}\n{server.log_tail(10)}", pytrace=False)
    else:
        pytest.fail(f"{block.where}: the poll loop ended on its own")
    out = capsys.readouterr().out

    assert published, f"the snippet never slept after a 204 (sleeps={sleeps})"
    assert sleeps == [3, 3], f"backoff: docs say 3 s after a 204 and reset to 3 s after a 200; slept {sleeps}"
    # It prints `m["id"], msg["type"], msg["payload"]` (member order is not fixed, so parse it).
    printed = [line.split(" ", 2) for line in out.splitlines()]
    assert [(i, t, ast.literal_eval(p)) for i, t, p in printed] == \
        [("1", "greeting", {"text": "hello from the test", "n": 1})], out
    # It acked: a poll from the acknowledged cursor finds nothing.
    auth = {"Authorization": f"Bearer {ns['reg']['api_token']}", "X-Client-Id": ns["reg"]["client_id"]}
    r = requests.get(f"{server.base}/messages/poll", headers=auth, timeout=10)
    assert r.status_code == 204, (r.status_code, r.text)


# ---------------------------------------------------------------------------
# docs/encryption.md "Python examples"
# ---------------------------------------------------------------------------

def _encryption_script(defines: str) -> Block:
    return one([b for b in blocks("encryption.md")
                if b.info == "python" and b.under(r"python example") and f"def {defines}(" in b.code],
               f"encryption.md Python example defining {defines}()")


def _register(server, fingerprint=None, name=None):
    r = requests.post(f"{server.base}/clients/register",
                      json={"name": name, "fingerprint": fingerprint or f"pytest-{uuid.uuid4()}"}, timeout=10)
    assert r.status_code == 201, (r.status_code, r.text)
    return r.json()


def _run_script(block: Block, tmp_path: Path, server, reg) -> subprocess.CompletedProcess:
    path = tmp_path / f"snippet_{block.line}.py"
    path.write_text(block.code)
    env = dict(os.environ, PIGEONHOLE_URL=server.origin, CLIENT_ID=reg["client_id"],
               API_TOKEN=reg["api_token"], PERSONAL_TOKEN=reg["personal_token"])
    return subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=20)


def test_encryption_md_poll_script(server, tmp_path):
    block = _encryption_script("decrypt")
    reg = _register(server, name="poll-script")
    payloads = [{"text": "café ✓"}, [1, 2, 3], None]
    for p in payloads:
        r = requests.post(f"{server.base}/messages/publish", headers={"X-Admin-Token": server.admin_token},
                          json={"to_client_ids": [reg["client_id"]], "type": "note", "payload": p}, timeout=10)
        assert r.status_code == 202, r.text
    run = _run_script(block, tmp_path, server, reg)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    # It prints `m["id"], decrypt(KEY, m)` per message (member order is not fixed, so parse it), then the cursor.
    assert lines[-1:] == ["cursor 3"], run.stdout
    got = [(int(i), ast.literal_eval(d)) for i, d in (line.split(" ", 1) for line in lines[:-1])]
    assert got == [(i, {"type": "note", "payload": p}) for i, p in enumerate(payloads, 1)], run.stdout
    again = _run_script(block, tmp_path, server, reg)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["no new messages"], again.stdout


def test_encryption_md_send_script(server, tmp_path):
    block = _encryption_script("encrypt")
    reg = _register(server, name="send-script")
    run = _run_script(block, tmp_path, server, reg)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["201 {'id': 1}"], run.stdout
    # A second run is a new message (fresh nonce): id 2.
    run = _run_script(block, tmp_path, server, reg)
    assert run.stdout.splitlines() == ["201 {'id': 2}"], (run.stdout, run.stderr)


def test_encryption_md_send_retry_is_idempotent(server, tmp_path, monkeypatch):
    """'To retry ..., resend the identical body' -> 200 with the original id; reuse with new content -> 422."""
    block = _encryption_script("encrypt")
    reg = _register(server, name="send-retry")
    ns = _load_functions(block, monkeypatch, reg)
    key = base64.b64decode(reg["personal_token"])
    body = ns["encrypt"](key, "status", {"ok": True}, aad={"client_id": reg["client_id"]})
    headers = ns["HEADERS"]
    url = f"{server.base}/messages/send"
    first = requests.post(url, headers=headers, json=body, timeout=10)
    retry = requests.post(url, headers=headers, json=body, timeout=10)
    assert (first.status_code, first.json()) == (201, {"id": 1})
    assert (retry.status_code, retry.json()) == (200, {"id": 1})
    nonce = base64.b64decode(body["nonce"])
    monkeypatch.setattr(os, "urandom", lambda n: nonce)
    reused = ns["encrypt"](key, "status", {"ok": False}, aad={"client_id": reg["client_id"]})
    r = requests.post(url, headers=headers, json=reused, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed", (r.status_code, r.text)


def _load_functions(block: Block, monkeypatch, reg=None) -> dict:
    """Execute a script's definitions (not its main()) with the env it reads."""
    monkeypatch.setenv("CLIENT_ID", (reg or {}).get("client_id", "00000000-0000-4000-8000-000000000001"))
    monkeypatch.setenv("API_TOKEN", (reg or {}).get("api_token", "pht_unused"))
    monkeypatch.setenv("PERSONAL_TOKEN", (reg or {}).get("personal_token", base64.b64encode(bytes(32)).decode()))
    ns: dict = {"__name__": "docs_snippet"}
    exec(compile(block.code, block.where, "exec"), ns)
    return ns


def _format_vectors() -> list:
    return json.loads(FORMAT_VECTORS.read_text(encoding="utf-8"))


def test_encryption_md_functions_reproduce_every_format_vector(monkeypatch):
    """encryption.md: "Their decrypt and encrypt functions reproduce every entry in pigeonhole_format_vectors.json"."""
    dec = _load_functions(_encryption_script("decrypt"), monkeypatch)["decrypt"]
    enc_ns = _load_functions(_encryption_script("encrypt"), monkeypatch)
    vectors = _format_vectors()
    assert len(vectors) >= 6
    problems = []
    for v in vectors:
        key = base64.b64decode(v["personal_token"])
        try:
            got = dec(key, v)
        except InvalidTag:
            problems.append(f"{v['description']}: decrypt() raised InvalidTag")
            continue
        if got != json.loads(v["plaintext"]):
            problems.append(f"{v['description']}: decrypt() gave {got!r}")
        monkeypatch.setattr(os, "urandom", lambda n, nonce=base64.b64decode(v["nonce"]): nonce)
        body = enc_ns["encrypt"](key, got["type"], got["payload"], aad=v["aad"])
        want = {"ciphertext": v["ciphertext"], "nonce": v["nonce"], "tag": v["tag"]}
        if v["aad"] is not None:
            want["aad"] = v["aad"]
        if body != want:
            problems.append(f"{v['description']}: encrypt() gave {body}, vector has {want}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Published vectors and examples decrypt with `cryptography`
# ---------------------------------------------------------------------------

def test_format_vectors_file_decrypts():
    for v in _format_vectors():
        key = base64.b64decode(v["personal_token"], validate=True)
        assert len(key) == 32 and len(base64.b64decode(v["nonce"])) == 12 and len(base64.b64decode(v["tag"])) == 16
        assert canonical(v["aad"]).decode() == v["aad_bytes"], v["description"]
        assert open_message(key, v) == json.loads(v["plaintext"]), v["description"]
        sealed = AESGCM(key).encrypt(base64.b64decode(v["nonce"]), v["plaintext"].encode(), v["aad_bytes"].encode())
        assert base64.b64encode(sealed[:-16]).decode() == v["ciphertext"], v["description"]
        assert base64.b64encode(sealed[-16:]).decode() == v["tag"], v["description"]


def test_empty_aad_object_differs_from_null():
    """encryption.md: "An empty object {} is not the same thing: it authenticates the 2 bytes {}"."""
    v = one([v for v in _format_vectors() if v["aad"] == {}], "format vector with aad {}")
    key = base64.b64decode(v["personal_token"])
    assert open_message(key, v) == json.loads(v["plaintext"])
    with pytest.raises(InvalidTag):
        open_message(key, dict(v, aad=None))


def test_worked_examples_decrypt():
    examples = [b for b in blocks("encryption.md") if b.info == "json" and b.under(r"worked example")]
    assert len(examples) >= 2, "encryption.md: expected the worked examples"
    canonical_expr = one([b for b in blocks("encryption.md") if b.info == "python" and b.under(r"canonical")],
                         "```python canonicalisation snippet").code.strip()
    file_vectors = {v["description"]: v for v in _format_vectors()}
    problems = []
    for b in examples:
        v = json.loads(b.code)
        where = b.where
        key = base64.b64decode(v["personal_token"], validate=True)
        nonce = base64.b64decode(v["nonce"], validate=True)
        # The canonicalisation one-liner from the docs gives the published aad_bytes.
        got_aad = eval(canonical_expr, {"json": json, "aad": v["aad"]})
        if got_aad != v["aad_bytes"].encode():
            problems.append(f"{where}: canonical snippet gives {got_aad!r}, doc aad_bytes {v['aad_bytes']!r}")
        try:
            plain = open_message(key, v)
        except InvalidTag:
            problems.append(f"{where}: does not decrypt (InvalidTag)")
            continue
        if plain != json.loads(v["plaintext"]):
            problems.append(f"{where}: decrypts to {plain!r}")
        sealed = AESGCM(key).encrypt(nonce, v["plaintext"].encode(), v["aad_bytes"].encode())
        if (base64.b64encode(sealed[:-16]).decode(), base64.b64encode(sealed[-16:]).decode()) != (v["ciphertext"], v["tag"]):
            problems.append(f"{where}: re-encryption differs from the published ciphertext/tag")
        # "Key = bytes `00 01 02 … 1f`, nonce = `01` × 12." / "Same key, nonce = `03` × 12."
        m = re.search(r"nonce = `([0-9a-fA-F]{2})` × (\d+)", b.lead)
        if not m or nonce != bytes([int(m.group(1), 16)]) * int(m.group(2)):
            problems.append(f"{where}: nonce {nonce.hex()} vs text {b.lead!r}")
        if key != bytes(range(32)):
            problems.append(f"{where}: key is not 00 01 … 1f as the text says")
        # "Plaintext 43 bytes, associated data 99 bytes, ciphertext 43 bytes."
        m = re.search(r"Plaintext (\d+) bytes, associated data (\d+) bytes, ciphertext (\d+) bytes", b.trail)
        sizes = (len(v["plaintext"].encode()), len(v["aad_bytes"].encode()), len(base64.b64decode(v["ciphertext"])))
        if not m or tuple(map(int, m.groups())) != sizes:
            problems.append(f"{where}: sizes {sizes} vs text {m.group(0) if m else None!r}")
        if file_vectors.get(v["description"]) != v:
            problems.append(f"{where}: not identical to the entry in {FORMAT_VECTORS.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_aad_canonicalisation_example():
    """encryption.md: `{"urgent": true, "note": "café ✓", "attempt": 3}` authenticates the 46 bytes ..."""
    b = one([b for b in blocks("encryption.md") if b.info == "" and b.under(r"canonical")],
            "plain block with the canonical AAD bytes")
    m = re.search(r"Example: `(\{.*?\})`\s+authenticates the (\d+) bytes", b.lead, re.S)
    assert m, b.lead
    aad, n = json.loads(m.group(1)), int(m.group(2))
    assert canonical(aad) == b.code.strip().encode()
    assert len(canonical(aad)) == n
    hexes = re.search(r"`café ✓` becomes the bytes `([0-9a-f ]+)`", b.trail)
    assert hexes and "café ✓".encode() == bytes.fromhex(hexes.group(1))


def test_api_md_poll_example_decrypts_with_register_example_key():
    """api.md: "The example above decrypts with the example `personal_token` from register"."""
    api = blocks("api.md")
    reg = one([json.loads(b.code) for b in api if b.info == "json" and b.under(r"clients/register")
               and "personal_token" in b.code], "register response example")
    poll = one([json.loads(b.code) for b in api if b.info == "json" and b.under(r"messages/poll")
                and "messages" in b.code], "poll response example")
    key = base64.b64decode(reg["personal_token"], validate=True)
    assert re.fullmatch(r"pht_[A-Za-z0-9_-]{43}", reg["api_token"])
    for m in poll["messages"]:
        assert m["aad"] == {"client_id": reg["client_id"], "created_at": m["created_at"], "id": m["id"]}
        plain = open_message(key, m)
        assert set(plain) == {"type", "payload"} and plain["type"] == m["type"], plain


def test_make_format_vectors_reprints_the_file():
    """encryption.md: "`python3 docs/tools/make_format_vectors.py` reprints the file byte for byte"."""
    run = subprocess.run([sys.executable, str(REPO / "docs" / "tools" / "make_format_vectors.py")],
                         capture_output=True, timeout=20)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout == FORMAT_VECTORS.read_bytes()


def test_errors_example_is_real(server):
    """api.md "Errors": the example body is what a too-short fingerprint gives."""
    ex = one([json.loads(b.code) for b in blocks("api.md") if b.info == "json" and b.headings[-1] == "Errors"],
             "error body example")
    r = requests.post(f"{server.base}/clients/register", json={"fingerprint": "short"}, timeout=10)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == ex["error"]["code"]
    assert "fingerprint" in r.json()["error"]["message"]


def test_api_md_json_examples_match_openapi():
    """Each JSON example under an endpoint heading of api.md is a valid request or
    response of that operation in openapi.yaml ("…" placeholders aside)."""
    from openapi_schema_validator import OAS31Validator

    spec = _openapi()
    problems, checked = [], 0
    for b in blocks("api.md"):
        if b.info != "json":
            continue
        m = re.search(r"`(GET|POST|PUT) (/[^?`\s]*)", b.headings[-1] if b.headings else "")
        if m:
            op = spec["paths"].get(m.group(2), {}).get(m.group(1).lower())
            if op is None:
                problems.append(f"{b.where}: openapi.yaml has no {m.group(1)} {m.group(2)}")
                continue
            candidates = [op.get("requestBody")] + list(op["responses"].values())
            schemas = [c["content"]["application/json"]["schema"]
                       for c in map(lambda n: _resolve(spec, n), candidates)
                       if c and "application/json" in (c.get("content") or {})]
        elif b.headings and b.headings[-1] == "Errors":
            schemas = [{"$ref": "#/components/schemas/Error"}]
        else:
            continue
        example = json.loads(b.code)
        checked += 1
        best = None
        for schema in schemas:
            validator = OAS31Validator(dict(schema, components=spec["components"]),
                                       format_checker=OAS31Validator.FORMAT_CHECKER)
            errors = [e for e in validator.iter_errors(example) if e.instance != "…"]
            if not errors:
                best = None
                break
            if best is None or len(errors) < len(best):
                best = errors
        if best:
            problems.append(f"{b.where}: matches no request/response schema of its operation; closest: "
                            + "; ".join(f"{e.message} at {list(e.absolute_path)}" for e in best))
    assert checked >= 7, f"only {checked} JSON examples found"
    assert not problems, "\n".join(problems)


def test_api_md_request_examples_are_accepted(server):
    """The register and publish request examples work as shown, with the documented responses."""
    api = blocks("api.md")

    def example(path_re, key):
        return one([json.loads(b.code) for b in api if b.info == "json" and b.under(path_re) and key in b.code],
                   f"request example with {key}")

    reg_req = example(r"clients/register", '"fingerprint"')
    r = requests.post(f"{server.base}/clients/register", json=reg_req, timeout=10)
    assert r.status_code == 201, r.text
    assert requests.post(f"{server.base}/clients/register", json=reg_req, timeout=10).json() == r.json()
    pub_req = example(r"messages/publish", '"to_client_ids"')
    r = requests.post(f"{server.base}/messages/publish", headers={"X-Admin-Token": server.admin_token},
                      json=pub_req, timeout=10)
    # The example's recipient is unknown on this server: skipped, but still counted.
    assert r.status_code == 202 and r.json()["recipients"] == len(set(pub_req["to_client_ids"])), r.text
