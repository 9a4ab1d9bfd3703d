"""The real release Lambda binaries under a Lambda Runtime API, against moto.

The deployed shape, offline: each of the eight bootstraps runs as its own
process against `cargo lambda watch --only-lambda-apis` (the Runtime API
emulator), with the environment template.yaml gives that function and only
its secrets, talking to DynamoDB and SQS emulated by moto over HTTP. The
HTTP functions are called through their function URLs
(`/lambda-url/<function>/api/v1/...`, parsed by lambda_http as API Gateway
v2 events); fan-out and cleanup through `cargo lambda invoke --data-file`
with SQS and scheduled events written here, the SQS one built from what
publish really put on the queue.

Inputs (see lambda_runtime.py):
* PIGEONHOLE_LAMBDA_BIN_DIR: prebuilt bootstraps (target/release,
  target/lambda, or .aws-sam/build of a host-architecture `sam build`).
  Unset: `cargo build --release -p pigeonhole-functions` runs once here.
* PIGEONHOLE_TEST_AWS_ENDPOINT: a running moto; unset: one is started.
* PIGEONHOLE_INFRA_BIN: a built pigeonhole-infra; unset: `cargo run`.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
import uuid

import boto3
import pytest
import requests

import lambda_runtime as lr
from installed import installed_module

ADMIN_TOKEN = "lrt-admin-" + secrets.token_hex(12)
OPERATOR_TOKENS = ["lrt-op-" + secrets.token_hex(8), "lrt-op2-" + secrets.token_hex(8)]
# One key of its own per purpose, as the template generates them.
PURPOSE_KEYS = {
    name: base64.b64encode(os.urandom(32)).decode()
    for name in ("TOKEN_KEY", "FINGERPRINT_KEY", "WRAPPING_KEY", "AT_REST_KEY")
}
HTTP_TIMEOUT = 20


pc = installed_module("pigeonhole_client")  # the Python client, as installed (see installed.py)


class Stack:
    def __init__(self, workdir, endpoint, infra_env, watch, functions):
        self.workdir = workdir
        self.endpoint = endpoint
        self.infra_env = infra_env
        self.watch = watch
        self.functions = functions  # name -> Proc
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                        region_name=lr.REGION)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.ddb = session.client("dynamodb", endpoint_url=endpoint)
        self.queue_url = infra_env["FANOUT_QUEUE_URL"]
        self.queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    # -- HTTP through the function URLs --------------------------------------

    def call(self, function, method, path, **kwargs):
        url = self.watch.url(function, path)
        try:
            return requests.request(method, url, timeout=HTTP_TIMEOUT, **kwargs)
        except requests.RequestException as e:
            pytest.fail(f"{method} {url}: {e}\n{self.logs(function)}", pytrace=False)

    def logs(self, *functions):
        names = functions or tuple(self.functions)
        return "\n".join(self.functions[n].logs() for n in names if n in self.functions) \
            + "\n" + self.watch.proc.logs(20)

    def register(self, name):
        fingerprint = secrets.token_urlsafe(24)
        resp = self.call("register", "POST", "/api/v1/clients/register",
                         json={"fingerprint": fingerprint, "name": name})
        assert resp.status_code == 201, (resp.status_code, resp.text, self.logs("register"))
        return fingerprint, resp.json()

    def auth(self, creds):
        return {"Authorization": "Bearer " + creds["api_token"], "X-Client-Id": creds["client_id"]}

    def publish(self, to, type_, payload):
        resp = self.call("publish", "POST", "/api/v1/messages/publish",
                         headers={"X-Admin-Token": ADMIN_TOKEN},
                         json={"to_client_ids": to, "type": type_, "payload": payload})
        assert resp.status_code == 202, (resp.status_code, resp.text, self.logs("publish"))
        return resp.json()

    # -- the queue, as the event source mapping sees it ----------------------

    def receive_jobs(self, at_least=1, timeout=10.0):
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < at_least and time.monotonic() < deadline:
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
            messages += got.get("Messages", [])
        assert len(messages) >= at_least, f"publish put {len(messages)} job(s) on the queue"
        return messages

    def sqs_record(self, message):
        """One SQS event record, in the shape Lambda's event source mapping sends."""
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": lr.REGION,
        }

    def delete(self, messages):
        if messages:
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])

    def invoke(self, function, event):
        result = lr.invoke(self.watch, function, event, self.workdir / "events")
        assert result.returncode == 0, (
            f"cargo lambda invoke {function} failed ({result.returncode})\nstdout: {result.stdout}\n"
            f"stderr: {result.stderr}\n{self.logs(function)}")
        try:
            return json.loads(result.stdout)
        except ValueError:
            pytest.fail(f"cargo lambda invoke {function} printed no JSON: {result.stdout!r}",
                        pytrace=False)

    def count_items(self, table_var, client_id):
        return self.ddb.query(
            TableName=self.infra_env[table_var], Select="COUNT", ConsistentRead=True,
            KeyConditionExpression="client_id = :c",
            ExpressionAttributeValues={":c": {"S": client_id}})["Count"]


def function_env(name, endpoint, infra_env):
    """What template.yaml gives function `name`: the tables (Globals), its
    own settings, and only the secrets it needs."""
    env = lr.aws_env(endpoint)
    env.update({k: infra_env[k] for k in lr.TABLE_VARS})
    settings = {
        "FANOUT_QUEUE_URL": infra_env["FANOUT_QUEUE_URL"],
        "POLL_RATE_LIMIT": "120",
        # 0: cleanup removes every acknowledged message at once, so the
        # test can see it remove one.
        "ACKED_RETENTION_SECS": "0",
        "SENT_RETENTION_SECS": "604800",
    }
    env.update({k: v for k, v in settings.items() if name in lr.ONLY_FOR[k]})
    values = {"ADMIN_TOKEN": ADMIN_TOKEN, "OPERATOR_TOKENS": ",".join(OPERATOR_TOKENS),
              **PURPOSE_KEYS}
    env.update({s: values[s] for s in lr.SECRETS[name]})
    return env


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(text):  # past pytest's output capture, so it shows with -q too
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[lambda-runtime] {text}")

    binaries, build_seconds = lr.function_binaries()
    if build_seconds is not None:
        say(f"cargo build --release -p pigeonhole-functions: {build_seconds:.1f} s")
    else:
        say(f"bootstraps from PIGEONHOLE_LAMBDA_BIN_DIR={os.environ['PIGEONHOLE_LAMBDA_BIN_DIR']}")

    started = time.monotonic()
    workdir = tmp_path_factory.mktemp("lambda-runtime")
    logdir = workdir / "logs"
    procs = []  # stopped in reverse: functions, then the watch, then moto

    def teardown():
        for proc in reversed(procs):
            lr.stop(proc)
    request.addfinalizer(teardown)

    endpoint = os.environ.get("PIGEONHOLE_TEST_AWS_ENDPOINT")
    if not endpoint:
        endpoint, moto = lr.start_moto(logdir)
        procs.append(moto)
    prefix = f"lrt-{os.getpid()}-{secrets.token_hex(3)}-"
    provision_started = time.monotonic()
    infra_env = lr.provision(endpoint, prefix, workdir / "infra.env")
    say(f"pigeonhole-infra --prefix {prefix}: {time.monotonic() - provision_started:.1f} s")

    watch = lr.start_watch(logdir)
    procs.append(watch.proc)
    functions = {}
    for name in lr.FUNCTIONS:
        proc = lr.start_function(watch, name, binaries[name], function_env(name, endpoint, infra_env),
                                 logdir)
        procs.append(proc)
        functions[name] = proc
    built = Stack(workdir, endpoint, infra_env, watch, functions)
    built.binaries = binaries
    built.logdir = logdir
    built.procs = procs
    # A function that failed its cold start has exited by now.
    time.sleep(0.3)
    dead = [n for n, p in functions.items() if not p.alive()]
    assert not dead, f"functions exited at start: {dead}\n{built.logs(*dead)}"
    say(f"moto, tables and queues, cargo lambda watch on :{watch.port} and "
        f"{len(functions)} functions up in {time.monotonic() - started:.1f} s; logs in {logdir}")
    yield built


def test_every_function_answers_health_and_only_its_own_route(stack):
    for name in ("register", "publish", "send", "poll", "ack", "list-clients"):
        resp = stack.call(name, "GET", "/api/v1/health")
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}, (name, resp.text)
    # One function per route: the poll function does not register.
    resp = stack.call("poll", "POST", "/api/v1/clients/register", json={"fingerprint": "x" * 16})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text
    resp = stack.call("register", "GET", "/api/v1/clients/register")
    assert resp.status_code == 405 and resp.headers.get("Allow") == "POST", (resp.status_code, resp.headers)
    resp = stack.call("register", "POST", "/api/v1/clients/register", data=b"{not json",
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json", resp.text


def test_whole_contract_through_function_urls(stack):
    # -- register: 201, then the same credentials again with 200 ----------
    fp_a, alice = stack.register("alice")
    _, bob = stack.register("bob")
    again = stack.call("register", "POST", "/api/v1/clients/register",
                       json={"fingerprint": fp_a, "name": "alice"})
    assert again.status_code == 200, again.text
    assert again.json() == alice

    # -- publish: 202, and the job (sealed, never plaintext) on the queue --
    payload = {"text": "hello from the lambda runtime", "n": 7}
    published = stack.publish([alice["client_id"], bob["client_id"]], "greeting", payload)
    assert published["recipients"] == 2
    jobs = stack.receive_jobs(at_least=1)
    assert len(jobs) == 1, [j["Body"] for j in jobs]
    body = jobs[0]["Body"]
    assert json.loads(body)["publish_id"] == published["publish_id"]
    assert payload["text"] not in body, "the payload sits in SQS in plaintext"

    # -- fan-out: the SQS event, then the same event again (redelivery) ----
    event = {"Records": [stack.sqs_record(j) for j in jobs]}
    assert stack.invoke("fanout", event) == {"batchItemFailures": []}
    for record in event["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = "2"
    assert stack.invoke("fanout", event) == {"batchItemFailures": []}
    stack.delete(jobs)  # what the event source mapping does after success
    assert stack.count_items("MESSAGES_TABLE", alice["client_id"]) == 1
    assert stack.count_items("MESSAGES_TABLE", bob["client_id"]) == 1

    # -- poll: 200, exactly one copy, decrypts under alice's key -----------
    resp = stack.call("poll", "GET", "/api/v1/messages/poll", headers=stack.auth(alice))
    assert resp.status_code == 200, (resp.status_code, resp.text, stack.logs("poll"))
    polled = resp.json()
    assert len(polled["messages"]) == 1, polled
    raw = polled["messages"][0]
    assert raw["type"] == "greeting" and polled["next_cursor"] == raw["id"]
    assert raw["aad"] == {"client_id": alice["client_id"], "created_at": raw["created_at"],
                          "id": raw["id"]}
    key = pc.key_from_token(alice["personal_token"])
    assert pc.decrypt(key, raw) == {"type": "greeting", "payload": payload}
    client = pc.PigeonholeClient("http://127.0.0.1:9", alice["client_id"], alice["api_token"],
                                 alice["personal_token"])
    assert client.decrypt(raw).payload == payload  # the reference client's aad check too
    # Bob's copy is sealed under bob's key, not alice's.
    bob_resp = stack.call("poll", "GET", "/api/v1/messages/poll", headers=stack.auth(bob))
    assert bob_resp.status_code == 200 and len(bob_resp.json()["messages"]) == 1
    with pytest.raises(pc.DecryptionError):
        pc.decrypt(key, bob_resp.json()["messages"][0])

    # -- ack: 200, then poll: 204 ------------------------------------------
    resp = stack.call("ack", "POST", "/api/v1/messages/ack", headers=stack.auth(alice),
                      json={"last_received_id": raw["id"]})
    assert resp.status_code == 200 and resp.json() == {"cursor": raw["id"]}, resp.text
    resp = stack.call("poll", "GET", "/api/v1/messages/poll", headers=stack.auth(alice))
    assert resp.status_code == 204 and resp.content == b"", (resp.status_code, resp.text)
    # Wrong credentials: 401.
    resp = stack.call("poll", "GET", "/api/v1/messages/poll",
                      headers={**stack.auth(alice), "Authorization": "Bearer pht_wrong"})
    assert resp.status_code == 401, resp.text

    # -- send: 201, the same body again: 200 with the same id --------------
    send_body = client.encrypt("status", {"ok": True})
    resp = stack.call("send", "POST", "/api/v1/messages/send", headers=stack.auth(alice),
                      json=send_body)
    assert resp.status_code == 201, (resp.status_code, resp.text, stack.logs("send"))
    sent_id = resp.json()["id"]
    assert sent_id == 1
    resp = stack.call("send", "POST", "/api/v1/messages/send", headers=stack.auth(alice),
                      json=send_body)
    assert resp.status_code == 200 and resp.json() == {"id": sent_id}, resp.text
    assert stack.count_items("CLIENT_MESSAGES_TABLE", alice["client_id"]) == 1

    # -- list clients: 200, alice online ------------------------------------
    resp = stack.call("list-clients", "GET", "/api/v1/operators/clients?limit=100",
                      headers={"X-Operator-Token": OPERATOR_TOKENS[1]})
    assert resp.status_code == 200, (resp.status_code, resp.text, stack.logs("list-clients"))
    listed = {}
    page = resp.json()
    while True:
        listed.update({c["id"]: c for c in page["clients"]})
        token = page.get("next_page_token")
        if not token:
            break
        page = stack.call("list-clients", "GET", "/api/v1/operators/clients",
                          params={"page_token": token},
                          headers={"X-Operator-Token": OPERATOR_TOKENS[0]}).json()
    assert listed[alice["client_id"]]["status"] == "online", listed
    assert listed[alice["client_id"]]["name"] == "alice"
    assert listed[bob["client_id"]]["status"] == "online", listed
    resp = stack.call("list-clients", "GET", "/api/v1/operators/clients",
                      headers={"X-Operator-Token": ADMIN_TOKEN})
    assert resp.status_code == 401, "the admin token is not an operator token"

    # -- cleanup: a scheduled event; alice's acknowledged message goes -----
    scheduled = {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": lr.REGION,
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/pigeonhole-cleanup"],
        "detail": {},
    }
    assert stack.invoke("cleanup", scheduled) == {"removed": 1, "removed_sent": 0, "finished": True}
    assert stack.count_items("MESSAGES_TABLE", alice["client_id"]) == 0
    assert stack.count_items("MESSAGES_TABLE", bob["client_id"]) == 1, "bob never acked"
    assert stack.invoke("cleanup", scheduled) == {"removed": 0, "removed_sent": 0, "finished": True}


def emf_metrics(stack, function):
    """The metric values the function's CloudWatch EMF lines carried, by name
    (each document's members named in `_aws.CloudWatchMetrics`)."""
    values = {}
    proc = stack.functions[function]
    for doc in lr.json_log_lines(proc.stdout() + proc.stderr()):
        directives = doc.get("_aws", {}).get("CloudWatchMetrics", [])
        for directive in directives:
            assert directive["Namespace"] == "Pigeonhole", directive
            for metric in directive["Metrics"]:
                name = metric["Name"]
                assert name in doc, f"{name} is declared but not in the document: {doc}"
                for dims in directive["Dimensions"]:
                    assert all(d in doc for d in dims), f"dimension missing: {dims} in {doc}"
                values.setdefault(name, []).append(doc[name])
    return values


def test_functions_write_their_metrics_as_cloudwatch_emf_lines(stack):
    # A publish, its fan-out and a poll of the message, through the real
    # bootstraps: each one's log must carry its metrics in Embedded Metric
    # Format, which CloudWatch Logs turns into metrics without an API call.
    _, dave = stack.register("dave")
    stack.publish([dave["client_id"]], "metrics", {"n": 1})
    jobs = stack.receive_jobs(at_least=1)
    assert stack.invoke("fanout", {"Records": [stack.sqs_record(j) for j in jobs]}) == {
        "batchItemFailures": []}
    stack.delete(jobs)
    resp = stack.call("poll", "GET", "/api/v1/messages/poll", headers=stack.auth(dave))
    assert resp.status_code == 200, resp.text

    polled = emf_metrics(stack, "poll")
    assert "Polls" in polled and "RequestLatency" in polled, (polled, stack.logs("poll"))
    fanout = emf_metrics(stack, "fanout")
    assert "MessagesDelivered" in fanout and "DeliveryLag" in fanout, (fanout, stack.logs("fanout"))
    lags = [v for value in fanout["DeliveryLag"] for v in (value if isinstance(value, list) else [value])]
    assert lags and all(0 <= v < 60 for v in lags), lags


def test_fanout_reports_only_the_bad_record(stack):
    _, carol = stack.register("carol")
    stack.publish([carol["client_id"]], "note", {"i": 1})
    jobs = stack.receive_jobs(at_least=1)
    good = [stack.sqs_record(j) for j in jobs]
    bad = dict(good[0], messageId=str(uuid.uuid4()), receiptHandle="AQEB-bad",
               body='{"not": "a fan-out job"}', md5OfBody="0" * 32)
    response = stack.invoke("fanout", {"Records": [bad, *good]})
    assert response == {"batchItemFailures": [{"itemIdentifier": bad["messageId"]}]}
    stack.delete(jobs)
    resp = stack.call("poll", "GET", "/api/v1/messages/poll", headers=stack.auth(carol))
    assert resp.status_code == 200 and [m["type"] for m in resp.json()["messages"]] == ["note"]


def test_missing_secret_fails_at_cold_start(stack):
    """Poll started without TOKEN_KEY: one clear error line naming it, a
    non-zero exit before it takes an invocation, and a call gets no answer
    from it. (Lambda reports that as Runtime.ExitError; the emulator, with
    no runtime to hand the event to, times out with 408.) A watch of its
    own, so the working poll function is not disturbed."""
    watch = lr.start_watch(stack.logdir, name="watch-cold-start", timeout=3)
    stack.procs.append(watch.proc)
    env = function_env("poll", stack.endpoint, stack.infra_env)
    del env["TOKEN_KEY"]
    proc = lr.start_function(watch, "poll", stack.binaries["poll"], env, stack.logdir,
                             log_name="poll-without-token-key")
    stack.procs.append(proc)
    try:
        proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"poll without TOKEN_KEY is still running\n{proc.logs()}", pytrace=False)
    assert proc.popen.returncode != 0, proc.logs()
    logged = lr.json_log_lines(proc.stdout() + proc.stderr())
    errors = [line for line in logged if str(line.get("level", "")).upper() == "ERROR"]
    assert len(errors) == 1, f"expected exactly one error log line:\n{proc.logs()}"
    assert "TOKEN_KEY" in json.dumps(errors[0]), errors[0]
    assert PURPOSE_KEYS["WRAPPING_KEY"] not in proc.logs(), "a key's value is never logged"
    mentions = [line for line in (proc.stdout() + proc.stderr()).splitlines() if "TOKEN_KEY" in line]
    assert len(mentions) == 1, f"the cause should be logged once, as JSON:\n{proc.logs()}"
    resp = requests.get(watch.url("poll", "/api/v1/health"), timeout=15)
    assert resp.status_code == 408, (resp.status_code, resp.text)
