"""template.yaml: the linters, and a cross-check against the code.

Two kinds of test:

* The SAM and CloudFormation linters: `cfn-lint template.yaml`, `sam
  validate` (the SAM translator) and `sam validate --lint`. Each catches
  what the others miss. They run offline with dummy credentials. A missing
  tool is a failure, never a skip: install tests/requirements-aws.txt.
* A consistency check that reads the Rust sources and the template and
  asserts they agree: every binary has exactly one function, every route
  reaches the function for it, every environment variable the code reads is
  set, each function holds only its own secrets and IAM actions, and the
  tables, queues, fan-out mapping, dead-letter queue and alarms exist.

Every fact about the code is parsed out of the code (functions/Cargo.toml,
shared/src/http/routes.rs, shared/src/config.rs,
shared/src/store/dynamodb/tables.rs, and the fan-out's limits and margins
in shared/src/queue/mod.rs, shared/src/handlers/{fanout,sqs_batch}.rs and
local/src/event_source.rs). Only what the code cannot say (which IAM
actions the DynamoDB store needs, which secrets the two non-HTTP functions
need, the fan-out's sizing from docs/architecture.md) is written down here.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
FUNCTIONS = ROOT / "functions"
ROUTES_RS = ROOT / "shared" / "src" / "http" / "routes.rs"
CONFIG_RS = ROOT / "shared" / "src" / "config.rs"
TABLES_RS = ROOT / "shared" / "src" / "store" / "dynamodb" / "tables.rs"
EVENTS = ROOT / "events"

# The binaries the functions crate builds. Used only while functions/ does
# not exist; once it does, the crate's own targets are the truth (and must
# still match this list, so a new binary gets an entry below).
EXPECTED_BINARIES = {
    "register", "publish", "send", "poll", "ack", "list-clients", "fanout", "cleanup",
}

# Health has no function of its own: every HTTP function answers it, and
# the template routes it to this one.
HEALTH_BINARY = "register"

# Secrets of the functions that serve no route (the HTTP functions' come
# from `Route::secrets` in routes.rs).
NON_HTTP_SECRETS = {"fanout": {"MASTER_KEY"}, "cleanup": set()}

# Settings that only one function reads.
ONLY_FOR = {
    # The fan-out enqueues the continuation of a job it could not finish.
    "FANOUT_QUEUE_URL": {"publish", "fanout"},
    "POLL_RATE_LIMIT": {"poll"},
    "ACKED_RETENTION_SECS": {"cleanup"},
    "SENT_RETENTION_SECS": {"cleanup"},
}

# Least privilege: the exact DynamoDB and SQS actions per function and
# resource (logical ID), following the DynamoDB store's requests. A
# TransactWriteItems is authorized per Put/Update inside it.
EXPECTED_IAM = {
    "register": {
        "ClientsTable": {"dynamodb:PutItem"},
        "FingerprintsTable": {"dynamodb:PutItem", "dynamodb:GetItem"},
    },
    "publish": {
        "FanoutQueue": {"sqs:SendMessage"},
        # Idempotency-Key: claim (conditional PutItem), complete (UpdateItem).
        "DedupTable": {"dynamodb:PutItem", "dynamodb:UpdateItem"},
    },
    "send": {
        "ClientsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "ClientMessagesTable": {"dynamodb:PutItem"},
        "DedupTable": {"dynamodb:PutItem", "dynamodb:GetItem"},
    },
    "poll": {
        "ClientsTable": {"dynamodb:UpdateItem"},
        "MessagesTable": {"dynamodb:Query"},
    },
    "ack": {"ClientsTable": {"dynamodb:UpdateItem"}},
    "list-clients": {"ClientsTable": {"dynamodb:Scan"}},
    "fanout": {
        "ClientsTable": {"dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem"},
        "MessagesTable": {"dynamodb:PutItem"},
        # BatchGetItem: which recipients already hold the publish.
        "DedupTable": {"dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:GetItem"},
        # What the event source mapping calls with the function's role, and
        # SendMessage for the continuation of a job cut short.
        "FanoutQueue": {
            "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:SendMessage",
        },
    },
    "cleanup": {
        # Segmented scan; UpdateItem moves each mailbox's purge mark.
        "ClientsTable": {"dynamodb:Scan", "dynamodb:UpdateItem"},
        "MessagesTable": {"dynamodb:Query", "dynamodb:BatchWriteItem"},
        "ClientMessagesTable": {"dynamodb:Query", "dynamodb:BatchWriteItem"},
        # The scan segments' saved positions.
        "DedupTable": {"dynamodb:GetItem", "dynamodb:PutItem"},
    },
}

# Upper-case string literals in the Rust sources that are not environment
# variables. Empty today; add a name here if the env-var check picks up a
# constant that is not read from the environment.
NOT_ENV_VARS: set[str] = set()


# ------------------------------------------------------------- helpers ---

class CfnLoader(yaml.SafeLoader):
    """PyYAML loader that keeps CloudFormation's short-form tags as the
    long-form data they stand for (`!Ref X` -> {"Ref": "X"})."""


def _construct_cfn_tag(loader, tag_suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if tag_suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def load_template():
    with open(TEMPLATE, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


def resources(template, kind):
    return {k: v for k, v in template["Resources"].items() if v.get("Type") == kind}


def functions_by_binary(template):
    """Binary name -> [(logical ID, resource)] for every SAM function."""
    found = {}
    for logical_id, res in resources(template, "AWS::Serverless::Function").items():
        binary = ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
        found.setdefault(binary, []).append((logical_id, res))
    return found


def function_for(template, binary):
    [(logical_id, res)] = functions_by_binary(template)[binary]
    return logical_id, res


def kebab(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def ref_target(value):
    """The logical ID a `!Ref X` or `!GetAtt X.Attr` points at, else None."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return value["Fn::GetAtt"][0]
    return None


def crate_binaries(crate_dir):
    """The binary targets Cargo builds for a crate: explicit [[bin]]
    entries plus, unless autobins = false, src/main.rs, src/bin/*.rs and
    src/bin/*/main.rs."""
    manifest = tomllib.loads((crate_dir / "Cargo.toml").read_text(encoding="utf-8"))
    package = manifest.get("package", {})
    names = {b["name"] for b in manifest.get("bin", [])}
    if package.get("autobins", True):
        if (crate_dir / "src" / "main.rs").exists():
            names.add(package["name"])
        bin_dir = crate_dir / "src" / "bin"
        if bin_dir.is_dir():
            names |= {p.stem for p in bin_dir.glob("*.rs")}
            names |= {p.parent.name for p in bin_dir.glob("*/main.rs")}
    return names


def expected_binaries():
    if FUNCTIONS.is_dir():
        return crate_binaries(FUNCTIONS)
    # functions/ not written yet: check the template against the planned list.
    return set(EXPECTED_BINARIES)


def _fn_body(source, name):
    """The text of `fn name(...)` up to the next `fn` (enough for its match
    arms)."""
    match = re.search(rf"\bfn {name}\b(.*?)(?=\n\s*(?:pub )?fn |\Z)", source, re.S)
    assert match, f"fn {name} not found"
    return match.group(1)


def _arms(body, value_pattern):
    """`Route::A | Route::B => <value>` arms -> {variant: value}."""
    out = {}
    for variants, value in re.findall(
        rf"((?:Route::\w+\s*\|?\s*)+)=>\s*\{{?\s*({value_pattern})", body
    ):
        for variant in re.findall(r"Route::(\w+)", variants):
            out[variant] = value
    return out


def code_routes():
    """{variant: (METHOD, path)} from routes.rs."""
    source = ROUTES_RS.read_text(encoding="utf-8")
    paths = {v: p.strip('"') for v, p in _arms(_fn_body(source, "path"), r'"[^"]*"').items()}
    methods = {
        v: m.split("::")[1] for v, m in _arms(_fn_body(source, "method"), r"Method::\w+").items()
    }
    assert paths and set(paths) == set(methods), (paths, methods)
    return {v: (methods[v], paths[v]) for v in paths}


def secret_env_names():
    """{Secret variant: env var} from config.rs."""
    source = CONFIG_RS.read_text(encoding="utf-8")
    names = dict(re.findall(r'Secret::(\w+)\s*=>\s*"([A-Z_]+)"', source))
    assert names, "no `Secret::X => \"NAME\"` arms in config.rs"
    return names


def route_secrets():
    """{Route variant: {env var}} from `Route::secrets` in routes.rs."""
    env = secret_env_names()
    body = _fn_body(ROUTES_RS.read_text(encoding="utf-8"), "secrets")
    out = {}
    for variant, secrets in _arms(body, r"&\[[^\]]*\]").items():
        out[variant] = {env[s] for s in re.findall(r"Secret::(\w+)", secrets)}
    return out


def table_env_vars():
    source = TABLES_RS.read_text(encoding="utf-8")
    match = re.search(r"const ENV: \[&'static str; \d+\] = \[(.*?)\];", source, re.S)
    assert match, "TableNames::ENV not found in tables.rs"
    return re.findall(r'"([A-Z_]+)"', match.group(1))


def env_vars_in_code():
    """Upper-case, underscore-joined string literals in shared/src and
    functions/src: the environment variables the code reads (AWS_* ones
    are the SDK's and Lambda's own)."""
    names = set()
    for src in (ROOT / "shared" / "src", FUNCTIONS / "src"):
        for path in src.rglob("*.rs") if src.is_dir() else []:
            names |= set(
                re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', path.read_text(encoding="utf-8"))
            )
    return {n for n in names if not n.startswith("AWS_")} - NOT_ENV_VARS


def function_env(template, res):
    glob = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = (res["Properties"].get("Environment") or {}).get("Variables", {})
    return {**glob, **own}


def http_events(res):
    return [
        e["Properties"]
        for e in (res["Properties"].get("Events") or {}).values()
        if e["Type"] == "HttpApi"
    ]


def policy_statements(template, res):
    """Every IAM statement the function's role gets: SAM inline policies,
    or the policies of an explicit role."""
    props = res["Properties"]
    docs = []
    if "Role" in props:
        role = template["Resources"][ref_target(props["Role"])]
        docs = [p["PolicyDocument"] for p in role["Properties"].get("Policies", [])]
        assert not props.get("Policies"), "SAM ignores Policies when Role is set"
    else:
        for policy in props.get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, (
                f"only inline statements are scoped here, got {policy!r}"
            )
            docs.append(policy)
    return [s for d in docs for s in d["Statement"]]


def granted_actions(template, res):
    """{logical ID: {action}} the function may call."""
    granted = {}
    for statement in policy_statements(template, res):
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        targets = statement["Resource"]
        targets = targets if isinstance(targets, list) else [targets]
        for target in targets:
            logical_id = ref_target(target)
            assert logical_id, f"unscoped resource {target!r} (a '*' grants every table)"
            granted.setdefault(logical_id, set()).update(actions)
    return granted


def tool(name):
    """A CLI from the Python environment running the tests, else PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.fail(
            f"`{name}` is not installed. It comes from tests/requirements-aws.txt: "
            f"`{sys.executable} -m pip install -r tests/requirements-aws.txt`."
        )
    return found


def run_offline(argv):
    env = dict(os.environ)
    # Never touch a real account: dummy credentials, no profile, no telemetry.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    env.update(
        SAM_CLI_TELEMETRY="0",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"{' '.join(argv)} failed (exit {result.returncode}):\n{output}"
    return output


# -------------------------------------------------------------- linters ---

def test_cfn_lint_passes():
    run_offline([tool("cfn-lint"), "template.yaml"])


def test_sam_validate_passes():
    output = run_offline([tool("sam"), "validate", "--template-file", "template.yaml"])
    assert "is a valid SAM Template" in output, output


def test_sam_validate_lint_passes():
    output = run_offline([tool("sam"), "validate", "--lint", "--template-file", "template.yaml"])
    assert "is a valid SAM Template" in output, output


# ------------------------------------------------------- consistency ---

@pytest.fixture(scope="module")
def template():
    return load_template()


def test_every_binary_has_exactly_one_function(template):
    binaries = expected_binaries()
    assert binaries == EXPECTED_BINARIES, (
        "functions/ builds a different set of binaries than EXPECTED_BINARIES "
        "in this test; give a new binary its function (and IAM entry) first"
    )
    by_binary = functions_by_binary(template)
    assert set(by_binary) == binaries, "functions without a binary, or binaries without a function"
    for binary, found in by_binary.items():
        assert len(found) == 1, f"{binary} is built by {[f[0] for f in found]}"
        logical_id, res = found[0]
        meta, props = res["Metadata"], res["Properties"]
        assert meta["BuildMethod"] == "rust-cargolambda", logical_id
        assert props["CodeUri"] == ".", logical_id


def test_every_function_runs_the_rust_runtime(template):
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "provided.al2023"
    assert glob["Handler"] == "bootstrap"
    assert glob["Architectures"] == [{"Ref": "Architecture"}]
    assert set(template["Parameters"]["Architecture"]["AllowedValues"]) == {"arm64", "x86_64"}
    assert glob["LoggingConfig"]["LogFormat"] == "JSON"
    for logical_id, res in resources(template, "AWS::Serverless::Function").items():
        for key in ("Runtime", "Handler", "Architectures"):
            assert key not in res["Properties"], f"{logical_id} overrides {key} from Globals"


def test_every_route_reaches_its_function(template):
    routes = code_routes()
    routed = {}
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        for event in http_events(res):
            assert event["ApiId"] == {"Ref": "HttpApi"}, logical_id
            key = (event["Method"].upper(), event["Path"])
            assert key not in routed, f"{key} is routed twice"
            routed[key] = binary
    for variant, key in routes.items():
        want = HEALTH_BINARY if key[1].endswith("/health") else kebab(variant)
        assert routed.get(key) == want, f"{variant} {key} should go to {want}, goes to {routed.get(key)}"
    assert set(routed) == set(routes.values()), "the template routes paths the code does not serve"


def test_every_env_var_the_code_reads_is_set(template):
    in_code = env_vars_in_code()
    # Guard the grep itself: these are read today, so finding none of them
    # means the pattern went blind, not that everything is fine.
    assert {"CLIENTS_TABLE", "MASTER_KEY", "FANOUT_QUEUE_URL", "POLL_RATE_LIMIT"} <= in_code, in_code
    set_somewhere = set()
    for res in resources(template, "AWS::Serverless::Function").values():
        set_somewhere |= set(function_env(template, res))
    missing = in_code - set_somewhere
    assert not missing, f"the code reads {sorted(missing)} but no function sets them"
    for name, binaries in ONLY_FOR.items():
        has = {b for b, [(_, r)] in functions_by_binary(template).items() if name in function_env(template, r)}
        assert has == binaries, f"{name} is set for {sorted(has)}, expected {sorted(binaries)}"


def test_each_function_holds_only_its_secrets(template):
    secret_names = set(secret_env_names().values())
    params = template["Parameters"]
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert not secret_names & set(globals_env), "a secret in Globals reaches every function"
    expected = dict(NON_HTTP_SECRETS)
    for variant, secrets in route_secrets().items():
        if not kebab(variant).startswith("health"):
            expected[kebab(variant)] = secrets
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        env = function_env(template, res)
        held = secret_names & set(env)
        assert held == expected[binary], f"{logical_id} holds {sorted(held)}, needs {sorted(expected[binary])}"
        for name in held:
            param = ref_target(env[name])
            assert param in params and params[param].get("NoEcho") is True, (
                f"{logical_id}.{name} must come from a NoEcho parameter"
            )
    assert re.fullmatch(params["MasterKey"]["AllowedPattern"], "A" * 43 + "=")
    assert not re.fullmatch(params["MasterKey"]["AllowedPattern"], "A" * 44)


def test_iam_is_least_privilege(template):
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        granted = granted_actions(template, res)
        assert granted == EXPECTED_IAM[binary], f"{logical_id}: {granted}"
        for statement in policy_statements(template, res):
            assert "*" not in json.dumps(statement["Action"]), f"{logical_id}: wildcard action"


def test_the_tables_and_queue_the_store_uses_exist(template):
    tables = resources(template, "AWS::DynamoDB::Table")
    queues = resources(template, "AWS::SQS::Queue")
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in table_env_vars():
        assert ref_target(env.get(name)) in tables, f"{name} must be !Ref of a table"
    for logical_id in ("ClientsTable", "FingerprintsTable", "MessagesTable", "ClientMessagesTable", "DedupTable"):
        props = tables[logical_id]["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", logical_id
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert tables["DedupTable"]["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at", "Enabled": True,
    }
    for binary in ("publish", "fanout"):
        _, res = function_for(template, binary)
        assert ref_target(function_env(template, res)["FANOUT_QUEUE_URL"]) == "FanoutQueue", binary
    assert set(queues) == {"FanoutQueue", "FanoutDeadLetterQueue"}


def test_fanout_reports_partial_batch_failures(template):
    _, fanout = function_for(template, "fanout")
    [source] = [e["Properties"] for e in fanout["Properties"]["Events"].values() if e["Type"] == "SQS"]
    assert ref_target(source["Queue"]) == "FanoutQueue"
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= source["BatchSize"] <= 10


def rust_const(path, name):
    """The value of `const NAME: ... = <value>;` in a Rust source, where the
    value is a product of integers (`7 * 86_400`) or `Duration::from_secs(n)`;
    a Duration comes back in seconds."""
    source = (ROOT / path).read_text(encoding="utf-8")
    match = re.search(rf"const {name}: [^=]+= ([^;]+);", source)
    assert match, f"const {name} not found in {path}"
    value = match.group(1).strip()
    secs = re.fullmatch(r"Duration::from_secs\((\d+)\)", value)
    if secs:
        return int(secs.group(1))
    factors = [f.strip().replace("_", "") for f in value.split("*")]
    assert all(f.isdigit() for f in factors), f"{name} = {value} is not a plain number"
    product = 1
    for f in factors:
        product *= int(f)
    return product


# The fan-out's numbers, as docs/architecture.md ("Sizing the fan-out")
# derives them: a batch of 5 jobs of at most 1,000 recipients, 120 s to do it
# in, at most 5 invocations at once (SQS event sources accept 2 to 1000).
FANOUT_TIMEOUT = 120
FANOUT_BATCH_SIZE = 5
FANOUT_MEMORY = 512
FANOUT_MAX_CONCURRENCY = 5


def test_fanout_is_sized_as_the_architecture_doc_says(template):
    _, fanout = function_for(template, "fanout")
    props = fanout["Properties"]
    assert props["Timeout"] == FANOUT_TIMEOUT
    assert props["MemorySize"] == FANOUT_MEMORY
    [source] = [e["Properties"] for e in props["Events"].values() if e["Type"] == "SQS"]
    assert source["BatchSize"] == FANOUT_BATCH_SIZE
    param = ref_target(source["ScalingConfig"]["MaximumConcurrency"])
    spec = template["Parameters"][param]
    assert param == "FanoutMaximumConcurrency"
    assert spec["Type"] == "Number" and spec["Default"] == FANOUT_MAX_CONCURRENCY
    assert (spec["MinValue"], spec["MaxValue"]) == (2, 1000)
    # The local server's event source (`--backend aws`) gives each batch what
    # Lambda does.
    event_source = "local/src/event_source.rs"
    assert rust_const(event_source, "BATCH_SIZE") == FANOUT_BATCH_SIZE
    assert rust_const(event_source, "INVOCATION_TIMEOUT") == FANOUT_TIMEOUT
    # A job is at most 1,000 recipients; the handler keeps 3 s to hand the
    # rest on and answer, and the timeout leaves room for a batch of them
    # at the planned 1,000 recipients per second even 10 times slower.
    recipients = rust_const("shared/src/queue/mod.rs", "MAX_JOB_RECIPIENTS")
    finish = rust_const("shared/src/handlers/sqs_batch.rs", "FINISH_MARGIN")
    stop = rust_const("shared/src/handlers/fanout.rs", "DEFAULT_STOP_MARGIN")
    assert recipients == 1000
    assert FANOUT_BATCH_SIZE * recipients / 1000 * 10 < FANOUT_TIMEOUT - finish - stop


def test_the_fanout_and_cleanup_get_their_settings(template):
    _, fanout = function_for(template, "fanout")
    env = function_env(template, fanout)
    assert ref_target(env["FANOUT_QUEUE_URL"]) == "FanoutQueue"
    assert "sqs:SendMessage" in granted_actions(template, fanout)["FanoutQueue"]
    _, cleanup = function_for(template, "cleanup")
    env = function_env(template, cleanup)
    params = template["Parameters"]
    for name, param, default in (
        ("ACKED_RETENTION_SECS", "AckedRetentionSecs", 86400),
        ("SENT_RETENTION_SECS", "SentRetentionSecs", 604800),
    ):
        assert ref_target(env[name]) == param, name
        assert params[param]["Type"] == "Number" and params[param]["MinValue"] == 0, param
        assert params[param]["Default"] == default, param
        # The same default as the code's.
        assert rust_const("shared/src/config.rs", f"DEFAULT_{name}") == default, name


def test_failed_jobs_go_to_the_dead_letter_queue(template):
    queue = template["Resources"]["FanoutQueue"]["Properties"]
    redrive = queue["RedrivePolicy"]
    assert ref_target(redrive["deadLetterTargetArn"]) == "FanoutDeadLetterQueue"
    assert redrive["maxReceiveCount"] >= 1
    _, fanout = function_for(template, "fanout")
    # A batch still running must not become visible to another poller: six
    # times the function's timeout, as AWS recommends.
    assert queue["VisibilityTimeout"] == 6 * fanout["Properties"]["Timeout"]
    assert redrive["maxReceiveCount"] == 5


def test_alarms_watch_the_dead_letter_queue_and_every_function(template):
    alarms = resources(template, "AWS::CloudWatch::Alarm").values()
    watched = set()
    dlq = False
    for alarm in alarms:
        props = alarm["Properties"]
        dims = {d["Name"]: ref_target(d["Value"]) for d in props.get("Dimensions", [])}
        if props["MetricName"] == "Errors":
            watched.add(dims.get("FunctionName"))
        if props["MetricName"] == "ApproximateNumberOfMessagesVisible":
            dlq |= dims.get("QueueName") == "FanoutDeadLetterQueue"
    assert dlq, "no alarm on the dead-letter queue's depth"
    assert watched == set(resources(template, "AWS::Serverless::Function")), watched


def test_cleanup_runs_on_a_schedule(template):
    _, cleanup = function_for(template, "cleanup")
    schedules = [e for e in cleanup["Properties"]["Events"].values() if e["Type"] == "Schedule"]
    assert len(schedules) == 1


def test_outputs(template):
    outputs = template["Outputs"]
    for name in ("ApiUrl", "FanoutQueueUrl", "FanoutDeadLetterQueueUrl", "ListClientsFunctionName"):
        assert name in outputs, name
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/api/v1")
    assert ref_target(outputs["ListClientsFunctionName"]["Value"]) == function_for(template, "list-clients")[0]


def test_sample_events_cover_every_route():
    routes = {f"{m} {p}" for m, p in code_routes().values()}
    seen = set()
    for path in EVENTS.glob("*.json"):
        event = json.loads(path.read_text(encoding="utf-8"))
        if event.get("version") == "2.0":
            assert event["routeKey"] in routes, f"{path.name}: unknown route {event['routeKey']}"
            method, raw_path = event["routeKey"].split(" ", 1)
            assert event["rawPath"] == raw_path and event["requestContext"]["http"]["method"] == method
            seen.add(event["routeKey"])
    assert routes - {"GET /api/v1/health"} <= seen, f"no sample event for {sorted(routes - seen)}"
    sqs = json.loads((EVENTS / "fanout-sqs.json").read_text(encoding="utf-8"))
    assert sqs["Records"][0]["eventSource"] == "aws:sqs"
    assert (EVENTS / "list-clients-operator.json").exists()
