"""template.yaml: the linters, and a cross-check against the code.

Two kinds of test:

* The SAM and CloudFormation linters: `cfn-lint template.yaml`, `sam
  validate` (the SAM translator) and `sam validate --lint`. Each catches
  what the others miss. They run offline with dummy credentials. A missing
  tool is a failure, never a skip: install tests/requirements-aws.txt.
* A consistency check that reads the Rust sources and the template and
  asserts they agree: every binary has exactly one function, every route
  reaches the function for it, every environment variable the code reads is
  set, each function holds only its own secrets (as Secrets Manager ARNs,
  never values) and IAM actions, and the tables, queues, secrets, fan-out
  mapping, dead-letter queue, throttling, reserved concurrency and alarms
  exist; the dashboard and the fan-out lag alarm name metrics the code
  writes (shared/src/metrics/), under dimensions it writes them with.

Every fact about the code is parsed out of the code (functions/Cargo.toml,
shared/src/http/routes.rs, shared/src/config.rs, shared/src/aws.rs,
shared/src/store/dynamodb/tables.rs, and the fan-out's limits and margins
in shared/src/queue/mod.rs, shared/src/handlers/{fanout,sqs_batch}.rs and
local/src/event_source.rs). Only what the code cannot say (which IAM
actions the DynamoDB store needs, that the cleanup needs no secret, the
fan-out's sizing from docs/architecture.md) is written down here.

The template has conditions (MasterKey, ReservedConcurrency,
AlarmEmail, InboundNotifications). Checks that depend on them run once per combination that
matters, with `Fn::If` resolved the way CloudFormation would.
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
AWS_RS = ROOT / "shared" / "src" / "aws.rs"
TABLES_RS = ROOT / "shared" / "src" / "store" / "dynamodb" / "tables.rs"
EVENTS = ROOT / "events"
METRICS_RS = ROOT / "shared" / "src" / "metrics" / "mod.rs"

# The binaries the functions crate builds. Used only while functions/ does
# not exist; once it does, the crate's own targets are the truth (and must
# still match this list, so a new binary gets an entry below).
EXPECTED_BINARIES = {
    "register", "rotate", "publish", "send", "poll", "ack", "list-clients", "delete-client",
    "sent", "publish-status", "set-tags", "fanout", "cleanup",
}

# Health has no function of its own: every HTTP function answers it, and
# the template routes it to this one.
HEALTH_BINARY = "register"

# Secrets of the cleanup, which serves no route and needs none (the HTTP
# functions' come from `Route::secrets` in routes.rs, the fan-out's from
# `FANOUT_SECRETS` in aws.rs).
CLEANUP_SECRETS: set[str] = set()

# Settings that only one function reads.
ONLY_FOR = {
    # The fan-out enqueues the continuation of a job it could not finish.
    "FANOUT_QUEUE_URL": {"publish", "fanout"},
    # Send announces each stored message on the inbound queue.
    "INBOUND_QUEUE_URL": {"send"},
    "POLL_RATE_LIMIT": {"poll"},
    "POLL_MODE": {"poll"},
    "SEND_RATE_LIMIT": {"send"},
    "REGISTER_RATE_LIMIT": {"register"},
    "REGISTER_RATE_LIMIT_EXEMPT": {"register"},
    "ACKED_RETENTION_SECS": {"cleanup"},
    "SENT_RETENTION_SECS": {"cleanup"},
}

# The secret resource that holds each secret, and the legacy master key's.
SECRET_RESOURCES = {
    "ADMIN_TOKEN": "AdminTokenSecret",
    "OPERATOR_TOKENS": "OperatorTokensSecret",
    "TOKEN_KEY": "TokenKeySecret",
    "FINGERPRINT_KEY": "FingerprintKeySecret",
    "WRAPPING_KEY": "WrappingKeySecret",
    "AT_REST_KEY": "AtRestKeySecret",
    "MASTER_KEY": "MasterKeySecret",
}
PURPOSE_KEYS = {"TOKEN_KEY", "FINGERPRINT_KEY", "WRAPPING_KEY", "AT_REST_KEY"}

# The condition values a deployment can have: a new stack, a legacy one
# (MasterKey set), each with and without reserved concurrency, and each
# kind with send's inbound notifications turned off.
MODES = [
    {"UsePurposeKeys": True, "UseMasterKey": False, "ReserveConcurrency": False, "HasAlarmEmail": False,
     "InboundEnabled": True},
    {"UsePurposeKeys": True, "UseMasterKey": False, "ReserveConcurrency": True, "HasAlarmEmail": True,
     "InboundEnabled": True},
    {"UsePurposeKeys": False, "UseMasterKey": True, "ReserveConcurrency": False, "HasAlarmEmail": False,
     "InboundEnabled": True},
    {"UsePurposeKeys": False, "UseMasterKey": True, "ReserveConcurrency": True, "HasAlarmEmail": True,
     "InboundEnabled": True},
    {"UsePurposeKeys": True, "UseMasterKey": False, "ReserveConcurrency": False, "HasAlarmEmail": False,
     "InboundEnabled": False},
    {"UsePurposeKeys": False, "UseMasterKey": True, "ReserveConcurrency": True, "HasAlarmEmail": True,
     "InboundEnabled": False},
]
MODE_IDS = [
    "purpose-keys", "purpose-keys-reserved", "legacy", "legacy-reserved",
    "purpose-keys-no-inbound", "legacy-reserved-no-inbound",
]

# LogLevel may offer only levels at which nothing logs a raw event, a
# header or a body: lambda_runtime logs whole events at trace, and the AWS
# SDK logs requests and responses (a GetSecretValue response included) at
# trace. Checked against lambda_runtime 1.5 and aws-smithy-runtime 1.16.
SAFE_LOG_LEVELS = {"error", "warn", "info", "debug"}

# Least privilege: the exact DynamoDB and SQS actions per function and
# resource (logical ID), following the DynamoDB store's requests. A
# TransactWriteItems is authorized per Put/Update inside it.
EXPECTED_IAM = {
    "register": {
        # The transaction's Put; GetItem checks whether the client a taken
        # fingerprint names is still alive; UpdateItem backfills the
        # fingerprint on a client registered before records carried it.
        "ClientsTable": {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"},
        "FingerprintsTable": {"dynamodb:PutItem", "dynamodb:GetItem"},
        # The per-address register limit: one counter UpdateItem.
        "DedupTable": {"dynamodb:UpdateItem"},
    },
    "rotate": {
        # Read the client, then a conditional UpdateItem (or the same as an
        # Update in a transaction with the fingerprint entries).
        "ClientsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        # Which key generations unacknowledged messages are sealed under.
        "MessagesTable": {"dynamodb:Query"},
        # A new fingerprint: put the new entry, delete the old one; read
        # the holder of a taken one.
        "FingerprintsTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"},
    },
    "publish": {
        "FanoutQueue": {"sqs:SendMessage"},
        # Idempotency-Key: claim (conditional PutItem), complete (UpdateItem).
        "DedupTable": {"dynamodb:PutItem", "dynamodb:UpdateItem"},
        # The status records: the header and the pages of named recipients
        # (conditional PutItems); GetItem reads back a page saved first.
        "AudiencesTable": {"dynamodb:PutItem", "dynamodb:GetItem"},
    },
    "send": {
        "ClientsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "ClientMessagesTable": {"dynamodb:PutItem"},
        "DedupTable": {"dynamodb:PutItem", "dynamodb:GetItem"},
    },
    "poll": {
        # UpdateItem per poll, or (PollMode read-mostly) mostly GetItem.
        "ClientsTable": {"dynamodb:UpdateItem", "dynamodb:GetItem"},
        "MessagesTable": {"dynamodb:Query"},
    },
    "ack": {"ClientsTable": {"dynamodb:UpdateItem"}},
    "list-clients": {
        # Every client (Scan), or with ?tag= the tag's entries (Query) and
        # those clients (BatchGetItem).
        "ClientsTable": {"dynamodb:Scan", "dynamodb:BatchGetItem"},
        "AudiencesTable": {"dynamodb:Query"},
    },
    "sent": {
        # A page of sent messages; when there is none, whether the client
        # exists.
        "ClientMessagesTable": {"dynamodb:Query"},
        "ClientsTable": {"dynamodb:BatchGetItem"},
    },
    "delete-client": {
        # Mark the client deleted, then remove its tag entries, its
        # messages, its fingerprint entry and its item.
        "ClientsTable": {"dynamodb:UpdateItem", "dynamodb:DeleteItem"},
        "AudiencesTable": {"dynamodb:BatchWriteItem"},
        "MessagesTable": {"dynamodb:Query", "dynamodb:BatchWriteItem"},
        "ClientMessagesTable": {"dynamodb:Query", "dynamodb:BatchWriteItem"},
        "FingerprintsTable": {"dynamodb:DeleteItem"},
    },
    "publish-status": {
        # Reads only: the publish's header and pages, the fan-out's
        # markers (who got it, under which id), the recipients' cursors.
        "AudiencesTable": {"dynamodb:Query"},
        "DedupTable": {"dynamodb:BatchGetItem"},
        "ClientsTable": {"dynamodb:BatchGetItem"},
    },
    "set-tags": {
        # Read the client, then one transaction: the client's Update, a Put
        # per tag of the new set, a Delete per tag removed.
        "ClientsTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "AudiencesTable": {"dynamodb:PutItem", "dynamodb:DeleteItem"},
    },
    "fanout": {
        # Scan: a to_all step enumerates the clients.
        "ClientsTable": {
            "dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Scan",
        },
        "MessagesTable": {"dynamodb:PutItem"},
        # BatchGetItem: which recipients already hold the publish.
        "DedupTable": {"dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:GetItem"},
        # An audience step: query the tags' entries, save its page (read
        # back when saved first), mark it continued or the header
        # enumerated.
        "AudiencesTable": {
            "dynamodb:Query", "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem",
        },
        # What the event source mapping calls with the function's role, and
        # SendMessage for the continuation of a job cut short.
        "FanoutQueue": {
            "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:SendMessage",
        },
    },
    "cleanup": {
        # Segmented scan; UpdateItem moves each mailbox's purge mark;
        # DeleteItem finishes a deletion that was cut short.
        "ClientsTable": {"dynamodb:Scan", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
        "FingerprintsTable": {"dynamodb:DeleteItem"},
        # UpdateItem: expired unacknowledged messages become tombstones.
        "MessagesTable": {"dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"},
        "ClientMessagesTable": {"dynamodb:Query", "dynamodb:BatchWriteItem"},
        # The scan segments' saved positions.
        "DedupTable": {"dynamodb:GetItem", "dynamodb:PutItem"},
        # A cut-short deletion's tag entries (publish records go by TTL).
        "AudiencesTable": {"dynamodb:BatchWriteItem"},
    },
}

# What send adds when InboundNotifications is Enabled: it announces each
# stored message on the inbound queue, and for a retried send reads the
# stored message's created_at (a Query of one item) to announce it again.
INBOUND_IAM = {
    "InboundQueue": {"sqs:SendMessage"},
    "ClientMessagesTable": {"dynamodb:Query"},
}


def expected_iam(binary, mode):
    """EXPECTED_IAM[binary] in `mode`."""
    expected = {k: set(v) for k, v in EXPECTED_IAM[binary].items()}
    if binary == "send" and mode["InboundEnabled"]:
        for target, actions in INBOUND_IAM.items():
            expected.setdefault(target, set()).update(actions)
    return expected


# Upper-case string literals in the Rust sources that are not environment
# variables. Empty today; add a name here if the env-var check picks up a
# constant that is not read from the environment.
# DYNAMODB_WARM_UP=off is for measuring the cold start's warm-up
# (bench/lambda_init.py); no deployment sets it.
NOT_ENV_VARS: set[str] = {"DYNAMODB_WARM_UP"}


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


def fanout_secrets():
    """{env var} from `FANOUT_SECRETS` in aws.rs: what `fanout_from_env`
    requires."""
    env = secret_env_names()
    source = AWS_RS.read_text(encoding="utf-8")
    match = re.search(r"const FANOUT_SECRETS: \[Secret; \d+\] = \[(.*?)\];", source, re.S)
    assert match, "FANOUT_SECRETS not found in aws.rs"
    names = {env[s] for s in re.findall(r"Secret::(\w+)", match.group(1))}
    assert names, "FANOUT_SECRETS is empty"
    return names


def expected_secrets():
    """{binary: {env var}}: the secrets each function must hold."""
    expected = {"fanout": fanout_secrets(), "cleanup": set(CLEANUP_SECRETS)}
    for variant, secrets in route_secrets().items():
        if not kebab(variant).startswith("health"):
            expected[kebab(variant)] = secrets
    return expected


def in_mode(secrets, mode):
    """The secrets a function is handed in `mode`: with the legacy master
    key, MASTER_KEY stands in for every purpose key."""
    if mode["UseMasterKey"]:
        keys = secrets & PURPOSE_KEYS
        return (secrets - keys) | ({"MASTER_KEY"} if keys else set())
    return set(secrets)


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


NO_VALUE = object()


def resolve(value, mode):
    """`value` with every `Fn::If` decided by `mode` ({condition: bool}) and
    `AWS::NoValue` removed, as CloudFormation resolves them."""
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            condition, then, otherwise = value["Fn::If"]
            assert condition in mode, f"no value for condition {condition} in {mode}"
            return resolve(then if mode[condition] else otherwise, mode)
        if value == {"Ref": "AWS::NoValue"}:
            return NO_VALUE
        out = {k: resolve(v, mode) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}
    if isinstance(value, list):
        return [v for v in (resolve(v, mode) for v in value) if v is not NO_VALUE]
    return value


def function_env(template, res, mode=None):
    """The function's environment (Globals included). With a `mode`,
    conditional variables are resolved; without one, every variable that
    any mode sets is there."""
    glob = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own = (res["Properties"].get("Environment") or {}).get("Variables", {})
    env = {**glob, **own}
    if mode is None:
        return env
    return resolve(env, mode)


def http_events(res):
    return [
        e["Properties"]
        for e in (res["Properties"].get("Events") or {}).values()
        if e["Type"] == "HttpApi"
    ]


def policy_statements(template, res, mode=MODES[0]):
    """Every IAM statement the function's role gets in `mode`: SAM inline
    policies, or the policies of an explicit role."""
    props = resolve(res["Properties"], mode)
    docs = []
    if "Role" in props:
        role = resolve(template["Resources"][ref_target(props["Role"])], mode)
        docs = [p["PolicyDocument"] for p in role["Properties"].get("Policies", [])]
        assert not props.get("Policies"), "SAM ignores Policies when Role is set"
    else:
        for policy in props.get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, (
                f"only inline statements are scoped here, got {policy!r}"
            )
            docs.append(policy)
    return [s for d in docs for s in d["Statement"]]


# The cold start's warm-up read (shared/src/store/dynamodb/warm_up.rs): a
# GetItem of one clients-table key that no client has, granted for that key
# alone.
WARM_UP_KEY = re.search(
    r'pub const WARM_UP_KEY: &str = "([^"]+)";',
    (ROOT / "shared/src/store/dynamodb/warm_up.rs").read_text(),
).group(1)


def is_warm_up(statement):
    return statement.get("Condition") == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [WARM_UP_KEY]}
    }


def granted_actions(template, res, mode=MODES[0]):
    """{logical ID: {action}} the function may call in `mode`, besides the
    warm-up read (`is_warm_up`)."""
    granted = {}
    for statement in policy_statements(template, res, mode):
        assert statement["Effect"] == "Allow"
        if is_warm_up(statement):
            continue
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        targets = statement["Resource"]
        targets = targets if isinstance(targets, list) else [targets]
        for target in targets:
            logical_id = ref_target(target)
            assert logical_id, f"unscoped resource {target!r} (a '*' grants every table)"
            granted.setdefault(logical_id, set()).update(actions)
    return granted


def split_grants(template, granted):
    """(table and queue grants, secret grants) of `granted_actions`."""
    secrets = set(resources(template, "AWS::SecretsManager::Secret"))
    data = {k: v for k, v in granted.items() if k not in secrets}
    held = {k: v for k, v in granted.items() if k in secrets}
    return data, held


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
    secret_names = set(secret_env_names().values()) | {"MASTER_KEY"}
    set_somewhere = set()
    for res in resources(template, "AWS::Serverless::Function").values():
        for name in function_env(template, res):
            set_somewhere.add(name)
            # A secret is set by naming its Secrets Manager secret.
            if name.endswith("_SECRET_ARN") and name[: -len("_SECRET_ARN")] in secret_names:
                set_somewhere.add(name[: -len("_SECRET_ARN")])
    missing = in_code - set_somewhere
    assert not missing, f"the code reads {sorted(missing)} but no function sets them"
    for name, binaries in ONLY_FOR.items():
        has = {b for b, [(_, r)] in functions_by_binary(template).items() if name in function_env(template, r)}
        assert has == binaries, f"{name} is set for {sorted(has)}, expected {sorted(binaries)}"


def noecho_refs(template, value):
    """The NoEcho parameters `value` refers to, however deeply (Ref, Sub)."""
    noecho = {k for k, v in template["Parameters"].items() if v.get("NoEcho")}
    text = json.dumps(value)
    found = set(re.findall(r'"Ref": "(\w+)"', text)) | set(re.findall(r"\$\{(\w+)\}", text))
    return found & noecho


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_no_function_holds_a_secret_in_its_environment(template, mode):
    secret_names = set(secret_env_names().values()) | {"MASTER_KEY"}
    assert {"ADMIN_TOKEN", "OPERATOR_TOKENS"} | PURPOSE_KEYS <= secret_names, secret_names
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert not {n for n in globals_env if n.endswith("_SECRET_ARN")}, "a secret in Globals reaches every function"
    for logical_id, res in resources(template, "AWS::Serverless::Function").items():
        env = function_env(template, res, mode)
        assert not secret_names & set(env), f"{logical_id} has {sorted(secret_names & set(env))} in its environment"
        refs = noecho_refs(template, env)
        assert not refs, f"{logical_id}'s environment carries the value of {sorted(refs)}"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_each_function_gets_exactly_its_secrets_by_arn(template, mode):
    expected = expected_secrets()
    secret_resources = resources(template, "AWS::SecretsManager::Secret")
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        env = function_env(template, res, mode)
        held = {n[: -len("_SECRET_ARN")] for n in env if n.endswith("_SECRET_ARN")}
        want = in_mode(expected[binary], mode)
        assert held == want, f"{logical_id} gets {sorted(held)}, its route needs {sorted(want)}"
        for name in held:
            target = ref_target(env[f"{name}_SECRET_ARN"])
            assert target == SECRET_RESOURCES[name], f"{logical_id}.{name}_SECRET_ARN -> {target}"
            assert target in secret_resources, target
            condition = secret_resources[target].get("Condition")
            assert condition is None or mode[condition], f"{target} does not exist in this mode"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_each_role_reads_exactly_its_secrets(template, mode):
    expected = expected_secrets()
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        _, held = split_grants(template, granted_actions(template, res, mode))
        want = {SECRET_RESOURCES[n] for n in in_mode(expected[binary], mode)}
        assert set(held) == want, f"{logical_id} may read {sorted(held)}, needs {sorted(want)}"
        for secret, actions in held.items():
            assert actions == {"secretsmanager:GetSecretValue"}, f"{logical_id} on {secret}: {actions}"
        for statement in policy_statements(template, res, mode):
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            if any(a.startswith("secretsmanager:") for a in actions):
                targets = statement["Resource"]
                targets = targets if isinstance(targets, list) else [targets]
                assert all(ref_target(t) in want for t in targets), f"{logical_id}: {statement}"


def test_the_secrets_are_created_by_the_deploy(template):
    params = template["Parameters"]
    secrets = resources(template, "AWS::SecretsManager::Secret")
    assert set(secrets) == set(SECRET_RESOURCES.values()), sorted(secrets)
    min_chars = rust_const("shared/src/config.rs", "MIN_KEY_MATERIAL_BYTES")
    for name in PURPOSE_KEYS:
        res = secrets[SECRET_RESOURCES[name]]
        # Generated, so `sam deploy --guided` asks for nothing; letters and
        # digits only, at least what the code requires.
        generate = res["Properties"]["GenerateSecretString"]
        assert generate["PasswordLength"] >= min_chars and generate["ExcludePunctuation"] is True
        assert "SecretString" not in res["Properties"]
        assert res["Condition"] == "UsePurposeKeys"
        # Losing a key invalidates every client, like losing the tables.
        assert res["DeletionPolicy"] == "Retain" and res["UpdateReplacePolicy"] == "Retain"
    for name, param in (("ADMIN_TOKEN", "AdminToken"), ("OPERATOR_TOKENS", "OperatorTokens"),
                        ("MASTER_KEY", "MasterKey")):
        res = secrets[SECRET_RESOURCES[name]]
        assert res["Properties"]["SecretString"] == {"Ref": param}, name
        assert params[param]["NoEcho"] is True, param
    assert secrets["MasterKeySecret"]["Condition"] == "UseMasterKey"
    assert "Condition" not in secrets["AdminTokenSecret"] and "Condition" not in secrets["OperatorTokensSecret"]
    conditions = template["Conditions"]
    assert conditions["UsePurposeKeys"] == {"Fn::Equals": [{"Ref": "MasterKey"}, ""]}
    assert conditions["UseMasterKey"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "MasterKey"}, ""]}]}
    legacy = params["MasterKey"]
    assert legacy["Default"] == "" and legacy["NoEcho"] is True
    assert re.fullmatch(legacy["AllowedPattern"], "")
    assert re.fullmatch(legacy["AllowedPattern"], "A" * 43 + "=")
    assert not re.fullmatch(legacy["AllowedPattern"], "A" * 44)
    # Nothing the deploy must be given beyond the two tokens people use.
    required = {k for k, v in params.items() if "Default" not in v}
    assert required == {"AdminToken", "OperatorTokens"}, required
    outputs = template["Outputs"]
    assert ref_target(outputs["AdminTokenSecretArn"]["Value"]) == "AdminTokenSecret"
    assert ref_target(outputs["OperatorTokensSecretArn"]["Value"]) == "OperatorTokensSecret"


def test_log_level_never_logs_events_or_secrets(template):
    level = template["Parameters"]["LogLevel"]
    allowed = set(level["AllowedValues"])
    assert allowed and allowed <= SAFE_LOG_LEVELS, allowed
    assert "trace" not in allowed and level["Default"] in allowed
    glob = template["Globals"]["Function"]
    assert ref_target(glob["Environment"]["Variables"]["RUST_LOG"]) == "LogLevel"
    # Lambda's ApplicationLogLevel becomes AWS_LAMBDA_LOG_LEVEL, which the
    # functions' subscriber prefers to RUST_LOG: it must stay unset.
    for logical_id, res in [("Globals", glob)] + list(resources(template, "AWS::Serverless::Function").items()):
        props = res if logical_id == "Globals" else res["Properties"]
        assert "ApplicationLogLevel" not in (props.get("LoggingConfig") or {}), logical_id
        assert "RUST_LOG" not in ((props.get("Environment") or {}).get("Variables") or {}) or logical_id == "Globals"


def test_api_gateway_throttles_every_route(template):
    params = template["Parameters"]
    settings = template["Resources"]["HttpApi"]["Properties"]["DefaultRouteSettings"]
    assert ref_target(settings["ThrottlingRateLimit"]) == "ThrottlingRateLimit"
    assert ref_target(settings["ThrottlingBurstLimit"]) == "ThrottlingBurstLimit"
    rate, burst = params["ThrottlingRateLimit"], params["ThrottlingBurstLimit"]
    assert rate["Type"] == burst["Type"] == "Number"
    assert (rate["Default"], burst["Default"]) == (500, 1000)
    assert rate["MinValue"] >= 1 and burst["MinValue"] >= 1
    # Every route at its default rate together stays within the account's
    # default 10,000 requests a second, which other APIs share.
    assert rate["Default"] * len(code_routes()) <= 10_000


def test_cors_allows_exactly_the_methods_the_routes_use(template):
    cors = template["Resources"]["HttpApi"]["Properties"]["DefinitionBody"]["x-amazon-apigateway-cors"]
    methods = {method for method, _ in code_routes().values()}
    # OPTIONS is the preflight itself; a method missing here (PUT for the
    # tags) fails in browsers only.
    assert set(cors["allowMethods"]) == methods | {"OPTIONS"}, cors["allowMethods"]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_reserved_concurrency_is_split_per_function(template, mode):
    param = template["Parameters"]["ReservedConcurrency"]
    split = template["Mappings"]["ReservedConcurrencySplit"]
    # Off by default: a new account may have a quota of 10, and Lambda
    # refuses reservations that leave fewer than 100 unreserved.
    assert param["Default"] == 0 and 0 in param["AllowedValues"]
    assert {str(v) for v in param["AllowedValues"]} == set(split)
    assert template["Conditions"]["ReserveConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ReservedConcurrency"}, "0"]}]
    }
    http = {b for b in expected_binaries() if b not in ("fanout", "cleanup")}
    for total, shares in split.items():
        assert set(shares) == {"".join(p.title() for p in b.split("-")) for b in http}, shares
        assert sum(shares.values()) == int(total), total
        if int(total):
            # Poll, which every client calls, gets the most; the routes
            # strangers or single clients can flood get little.
            assert shares["Poll"] == max(shares.values()) and shares["Poll"] * 2 >= int(total)
            assert shares["Register"] < shares["Poll"] and shares["Send"] < shares["Poll"]
            assert all(v >= 1 for v in shares.values()), shares
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        raw = res["Properties"].get("ReservedConcurrentExecutions")
        value = resolve({"v": raw}, mode).get("v") if raw is not None else None
        if binary == "cleanup":
            assert raw is None, "the hourly cleanup needs no reservation"
        elif not mode["ReserveConcurrency"]:
            assert value is None, logical_id
        elif binary == "fanout":
            # Exactly what its event source may run at once.
            assert ref_target(value) == "FanoutMaximumConcurrency"
        else:
            key = "".join(p.title() for p in binary.split("-"))
            assert value == {"Fn::FindInMap": ["ReservedConcurrencySplit", {"Ref": "ReservedConcurrency"}, key]}


def test_the_poll_mode_reaches_the_poll_function(template):
    _, res = function_for(template, "poll")
    assert ref_target(function_env(template, res)["POLL_MODE"]) == "PollMode"
    spec = template["Parameters"]["PollMode"]
    assert spec["Default"] == "exact" and spec["AllowedValues"] == ["exact", "read-mostly"]


def test_rate_limits_reach_their_functions(template):
    params = template["Parameters"]
    for binary, name, param in (
        ("poll", "POLL_RATE_LIMIT", "PollRateLimit"),
        ("send", "SEND_RATE_LIMIT", "SendRateLimit"),
        ("register", "REGISTER_RATE_LIMIT", "RegisterRateLimit"),
    ):
        _, res = function_for(template, binary)
        assert ref_target(function_env(template, res)[name]) == param, name
        spec = params[param]
        assert spec["Type"] == "Number" and spec["MinValue"] == 0, param
        assert spec["Default"] == rust_const("shared/src/config.rs", f"DEFAULT_{name}"), param
    _, register = function_for(template, "register")
    exempt = params["RegisterRateLimitExempt"]
    assert ref_target(function_env(template, register)["REGISTER_RATE_LIMIT_EXEMPT"]) == "RegisterRateLimitExempt"
    # Empty on AWS: every source address is limited.
    assert exempt["Default"] == ""
    assert re.fullmatch(exempt["AllowedPattern"], "203.0.113.0/24,2001:db8::/32")


def test_iam_is_least_privilege(template):
    for mode in MODES:
        for binary, [(logical_id, res)] in functions_by_binary(template).items():
            data, _ = split_grants(template, granted_actions(template, res, mode))
            assert data == expected_iam(binary, mode), f"{logical_id}: {data}"
            for statement in policy_statements(template, res, mode):
                assert "*" not in json.dumps(statement["Action"]), f"{logical_id}: wildcard action"


def test_every_function_may_open_its_connection_at_cold_start_and_read_nothing(template):
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        for mode in MODES:
            warm_ups = [s for s in policy_statements(template, res, mode) if is_warm_up(s)]
            if binary == "fanout":
                # Its role reads client items anyway.
                assert not warm_ups
                assert "dynamodb:GetItem" in granted_actions(template, res, mode)["ClientsTable"]
                continue
            assert len(warm_ups) == 1, f"{logical_id}: {warm_ups}"
            [statement] = warm_ups
            assert statement["Action"] == "dynamodb:GetItem", logical_id
            assert ref_target(statement["Resource"]) == "ClientsTable", logical_id


def test_the_tables_and_queue_the_store_uses_exist(template):
    tables = resources(template, "AWS::DynamoDB::Table")
    queues = resources(template, "AWS::SQS::Queue")
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in table_env_vars():
        assert ref_target(env.get(name)) in tables, f"{name} must be !Ref of a table"
    for logical_id in ("ClientsTable", "FingerprintsTable", "MessagesTable", "ClientMessagesTable", "DedupTable",
                       "AudiencesTable"):
        props = tables[logical_id]["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", logical_id
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    # Dedup markers and keys, and publish status records, expire.
    for logical_id in ("DedupTable", "AudiencesTable"):
        assert tables[logical_id]["Properties"]["TimeToLiveSpecification"] == {
            "AttributeName": "expires_at", "Enabled": True,
        }, logical_id
    for binary in ("publish", "fanout"):
        _, res = function_for(template, binary)
        assert ref_target(function_env(template, res)["FANOUT_QUEUE_URL"]) == "FanoutQueue", binary
    assert set(queues) == {"FanoutQueue", "FanoutDeadLetterQueue", "InboundQueue"}


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


def rust_str_const(path, name):
    """The value of `const NAME: &str = "value";` in a Rust source."""
    source = (ROOT / path).read_text(encoding="utf-8")
    match = re.search(rf'const {name}: &str = "([^"]*)";', source)
    assert match, f"const {name} not found in {path}"
    return match.group(1)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_send_announces_on_the_fifo_inbound_queue_when_enabled(template, mode):
    params, conditions = template["Parameters"], template["Conditions"]
    param = params["InboundNotifications"]
    assert param["Type"] == "String" and param["Default"] == "Enabled"
    assert set(param["AllowedValues"]) == {"Enabled", "Disabled"}
    assert conditions["InboundEnabled"] == {"Fn::Equals": [{"Ref": "InboundNotifications"}, "Enabled"]}
    # The queue exists only when enabled; FIFO, so that the send function's
    # MessageGroupId (the client) and MessageDeduplicationId
    # (<client_id>:<id>) keep each client's notices in order and drop a
    # retried send's repeat; high-throughput FIFO (one group per client);
    # kept 4 days; encrypted at rest.
    queue = template["Resources"]["InboundQueue"]
    assert queue["Type"] == "AWS::SQS::Queue" and queue["Condition"] == "InboundEnabled"
    props = queue["Properties"]
    assert props["FifoQueue"] is True
    assert props["ContentBasedDeduplication"] is False
    assert props["DeduplicationScope"] == "messageGroup"
    assert props["FifoThroughputLimit"] == "perMessageGroupId"
    assert props["MessageRetentionPeriod"] == 4 * 86400
    assert props["SqsManagedSseEnabled"] is True
    assert "QueueName" not in props, "infra names it <prefix>inbound.fifo; CloudFormation adds .fifo itself"
    # Only the send function is told where it is, and only when enabled.
    variable = rust_str_const("shared/src/aws.rs", "INBOUND_QUEUE_URL")
    for binary, [(logical_id, res)] in functions_by_binary(template).items():
        env = function_env(template, res, mode)
        if binary == "send" and mode["InboundEnabled"]:
            assert ref_target(env[variable]) == "InboundQueue", logical_id
        else:
            assert variable not in env, logical_id
    _, send = function_for(template, "send")
    granted = granted_actions(template, send, mode)
    if mode["InboundEnabled"]:
        assert granted["InboundQueue"] == {"sqs:SendMessage"}
    else:
        assert "InboundQueue" not in granted
    # Outputs for the user's own function, only when the queue exists.
    outputs = template["Outputs"]
    for name in ("InboundQueueUrl", "InboundQueueArn"):
        assert outputs[name]["Condition"] == "InboundEnabled", name
    assert outputs["InboundQueueUrl"]["Value"] == {"Ref": "InboundQueue"}
    assert outputs["InboundQueueArn"]["Value"] == {"Fn::GetAtt": ["InboundQueue", "Arn"]}
    # Nothing else refers to the queue unconditionally: CloudFormation
    # refuses a reference to a resource whose condition is false.
    for logical_id, res in template["Resources"].items():
        if logical_id == "InboundQueue":
            continue
        resolved = json.dumps(resolve(res, {**mode, "InboundEnabled": False}))
        assert "InboundQueue" not in resolved, f"{logical_id} refers to InboundQueue when it does not exist"


# ------------------------------------------------- metrics and dashboard ---

def code_metrics():
    """(namespace, {CloudWatch name: [set of dimension names]}) from
    shared/src/metrics/mod.rs: what the functions write to their logs."""
    source = METRICS_RS.read_text(encoding="utf-8")
    namespace = re.search(r'pub const NAMESPACE: &str = "(\w+)";', source).group(1)
    module = re.search(r"pub mod dimension \{(.*?)\n\}", source, re.S).group(1)
    dimension = dict(re.findall(r'pub const (\w+): &str = "(\w+)";', module))
    assert {"STACK", "FUNCTION", "ROUTE", "STATUS_CLASS", "OUTCOME"} <= set(dimension), dimension
    metrics = {}
    for body in re.findall(r"= Metric \{(.*?)\n\};", source, re.S):
        name = re.search(r'cloudwatch: "(\w+)"', body).group(1)
        sets = re.search(r"dimensions: &\[(.*)\],\n", body).group(1)
        metrics[name] = [
            {dimension[d.strip()] for d in group.split(",") if d.strip()}
            for group in re.findall(r"&\[([^\]]*)\]", sets)
        ]
        assert metrics[name], f"{name} has no dimension set"
    assert {"Requests", "DeliveryLag", "Polls", "FanoutJobs"} <= set(metrics), sorted(metrics)
    return namespace, metrics


def dashboard_body(template):
    """The dashboard's JSON, with every `${...}` of its !Sub replaced by a
    placeholder string (numbers for Number parameters), and the names it
    substitutes."""
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(body, str), "DashboardBody is one !Sub string"
    params = template["Parameters"]
    names = re.findall(r"\$\{([^}]+)\}", body)

    def placeholder(match):
        name = match.group(1)
        if params.get(name, {}).get("Type") == "Number":
            return str(params[name]["Default"])
        return f"<{name}>"

    return json.loads(re.sub(r"\$\{([^}]+)\}", placeholder, body)), names


def dashboard_metrics(body):
    """[(namespace, metric name, {dimension: value}, options)] of every
    metric line of every widget, and [(namespace, {dimension}, metric name)]
    of every SEARCH expression."""
    lines, searches = [], []
    for widget in body["widgets"]:
        for line in widget.get("properties", {}).get("metrics", []):
            options = line[-1] if isinstance(line[-1], dict) else {}
            plain = [p for p in line if not isinstance(p, dict)]
            if plain:
                assert "..." not in plain and "." not in plain, f"no shorthand, so the test can read {line}"
                namespace, name, *pairs = plain
                lines.append((namespace, name, dict(zip(pairs[::2], pairs[1::2])), options))
            expression = options.get("expression", "")
            for schema, name in re.findall(r"SEARCH\('\{([^}]*)\} MetricName=\"(\w+)\"", expression):
                namespace, *dims = schema.split(",")
                searches.append((namespace, set(dims), name))
            if expression:
                assert "SEARCH(" in expression, expression
    return lines, searches


def test_the_dashboard_shows_what_operators_need(template):
    namespace, metrics = code_metrics()
    dashboard = template["Resources"]["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    # Dashboards are global to an account: the name carries the region.
    assert dashboard["Properties"]["DashboardName"] == {"Fn::Sub": "${AWS::StackName}-${AWS::Region}"}
    body, names = dashboard_body(template)
    # Everything substituted exists.
    resources_ = template["Resources"]
    for name in names:
        target = name.split(".")[0]
        assert target in resources_ or target in template["Parameters"] or name in (
            "AWS::StackName", "AWS::Region",
        ), f"the dashboard refers to {name}"
    lines, searches = dashboard_metrics(body)
    assert lines and searches
    for widget in body["widgets"]:
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "<AWS::Region>", widget["properties"]["title"]
    # Every Pigeonhole metric is one the code writes, with one of the
    # dimension sets it writes it under, for this stack.
    for ns, name, dims, _ in lines:
        if ns != namespace:
            assert ns.startswith("AWS/"), ns
            continue
        assert name in metrics, f"the dashboard shows {name}, which the code does not write"
        assert set(dims) in metrics[name], f"{name} is not written with dimensions {sorted(dims)}"
        assert dims["Stack"] == "<AWS::StackName>", name
        if "StatusClass" in dims:
            assert dims["StatusClass"] in {"2xx", "4xx", "5xx"}
    for ns, dims, name in searches:
        assert ns == namespace and name in metrics, name
        assert dims in metrics[name], f"SEARCH for {name} by {sorted(dims)}"
    shown = {(ns, name) for ns, name, _, _ in lines} | {(ns, name) for ns, _, name in searches}
    # Requests, errors, throttles, the fan-out's lag and its dead-letter
    # queue, and what costs money.
    for ns, name in [
        (namespace, "Requests"), (namespace, "RequestLatency"), ("AWS/ApiGateway", "5xx"),
        (namespace, "Polls"), ("AWS/Lambda", "Throttles"), ("AWS/DynamoDB", "WriteThrottleEvents"),
        (namespace, "StorageRetries"), (namespace, "DeliveryLag"), (namespace, "FanoutJobs"),
        (namespace, "MessagesDelivered"), ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/DynamoDB", "ConsumedWriteCapacityUnits"), ("AWS/DynamoDB", "ConsumedReadCapacityUnits"),
        ("AWS/Lambda", "Invocations"), ("AWS/ApiGateway", "Count"),
    ]:
        assert (ns, name) in shown, f"the dashboard does not show {ns} {name}"
    errors = [d for ns, n, d, _ in lines if (ns, n) == (namespace, "Requests") and d.get("StatusClass") == "5xx"]
    assert errors, "no graph of the 5xx the functions answer"
    dlq = [d for ns, n, d, _ in lines if n == "ApproximateNumberOfMessagesVisible"]
    assert {"QueueName": "<FanoutDeadLetterQueue.QueueName>"} in dlq, dlq
    lag_stats = {o.get("stat") for ns, n, _, o in lines if n == "DeliveryLag"}
    assert {"p50", "p99"} <= lag_stats, lag_stats
    # Every function's invocations, and every table's writes.
    invoked = {d["FunctionName"] for ns, n, d, _ in lines if n == "Invocations"}
    assert invoked == {f"<{f}>" for f in resources(template, "AWS::Serverless::Function")}, invoked
    written = {d["TableName"] for ns, n, d, _ in lines if n == "ConsumedWriteCapacityUnits"}
    assert written == {f"<{t}>" for t in resources(template, "AWS::DynamoDB::Table")}, written
    assert template["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"].endswith("#dashboards:name=${Dashboard}")


def test_an_alarm_watches_the_fanout_lag(template):
    namespace, metrics = code_metrics()
    alarm = template["Resources"]["FanoutLagAlarm"]["Properties"]
    assert alarm["Namespace"] == namespace and alarm["MetricName"] == "DeliveryLag"
    dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    assert dims == {"Stack": {"Ref": "AWS::StackName"}}
    assert set(dims) in metrics["DeliveryLag"]
    # The p99 over the threshold for two 5-minute periods; no publish, no data.
    assert alarm["ExtendedStatistic"] == "p99" and "Statistic" not in alarm
    assert (alarm["Period"], alarm["EvaluationPeriods"]) == (300, 2)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert ref_target(alarm["Threshold"]) == "DeliveryLagAlarmSeconds"
    param = template["Parameters"]["DeliveryLagAlarmSeconds"]
    assert param["Type"] == "Number" and param["Default"] == 60 and param["MinValue"] >= 1
    assert alarm["AlarmActions"] == {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
    # The dashboard draws the same threshold on the lag graph.
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert '"value": ${DeliveryLagAlarmSeconds}' in body


def test_metrics_are_written_per_stack(template):
    # The functions read the stack's name for the Stack dimension of every
    # metric (functions/src/lib.rs), and every function is given it.
    variable = rust_str_const("functions/src/lib.rs", "STACK_NAME")
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env[variable] == {"Ref": "AWS::StackName"}
    for logical_id, res in resources(template, "AWS::Serverless::Function").items():
        assert variable not in ((res["Properties"].get("Environment") or {}).get("Variables") or {}), logical_id


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
            method, route_path = event["routeKey"].split(" ", 1)
            # A path parameter ({client_id}) matches one segment.
            pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(route_path))
            assert re.fullmatch(pattern, event["rawPath"]), (path.name, event["rawPath"])
            assert event["requestContext"]["http"]["method"] == method
            seen.add(event["routeKey"])
    assert routes - {"GET /api/v1/health"} <= seen, f"no sample event for {sorted(routes - seen)}"
    sqs = json.loads((EVENTS / "fanout-sqs.json").read_text(encoding="utf-8"))
    assert sqs["Records"][0]["eventSource"] == "aws:sqs"
    assert (EVENTS / "list-clients-operator.json").exists()
