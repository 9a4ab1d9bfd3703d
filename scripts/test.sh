#!/usr/bin/env bash
# Runs every check and test Pigeonhole has, installing what it needs first.
# Works on a fresh Debian machine with the Rust toolchain, Python 3 and Node.
# Usage: scripts/test.sh            (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

# One clean build, nothing to reuse: incremental state would only take disk
# (several GB for this tree). Set CARGO_INCREMENTAL=1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Whatever this script starts in the background dies with it, however it
# exits (a failed step, ^C, SIGTERM).
moto_pid=""
emulator_starters=""   # scripts/emulators.sh starts still running: their pids
cleanup() {
  for pid in $emulator_starters; do kill -- -"$pid" 2>/dev/null || true; done
  scripts/emulators.sh stop all 2>/dev/null || true
  [ -z "$moto_pid" ] || kill "$moto_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The docs walk-through test runs the documented curl | jq commands;
# docker-compose (Debian's, which needs no engine for it) checks
# local/docker-compose.yml.
missing=""
for tool in curl jq docker-compose; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
  step "installing$missing"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
  else
    echo "please install:$missing" >&2
    exit 1
  fi
fi

# Python tools live in a virtualenv inside target/, so nothing touches the
# system interpreter and `cargo clean` removes them too.
venv="$root/target/pyenv"
step "python environment ($venv)"
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    else
      echo "python3 -m venv failed; install python3-venv (apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  -r tests/python/requirements.txt -r tests/requirements-aws.txt
# The Python clients, installed the way a user installs them; the tests
# import them from site-packages and run their console scripts (see
# tests/python/installed.py). --no-index: the package builds offline (its
# build backend is in the tree and needs nothing downloaded); its two
# dependencies came with the requirements above.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index ./clients/python

# Two more emulators, both the real thing rather than a model of it: AWS's
# DynamoDB Local, and LocalStack (DynamoDB, which is DynamoDB Local again,
# and SQS) running on this host without Docker. scripts/emulators.sh
# installs them into target/emulators (Java from Debian if missing) and
# starts them; here both do that in the background while the code builds,
# and the steps that use them wait for them. Logs: target/dynamodb-local.log,
# target/localstack.log, and target/*-start.log for the installs.
step "AWS emulators: DynamoDB Local and LocalStack (installing and starting in the background)"
start_emulator() {
  # setsid: its own process group, so cleanup can end the install with it.
  setsid --wait scripts/emulators.sh start "$1" >"target/$1.url" 2>"target/$1-start.log" &
  emulator_starters="$emulator_starters $!"
}
start_emulator dynamodb-local
ddb_starter=$!
start_emulator localstack
localstack_starter=$!
# Waits for one started above (in this shell: `wait` needs its parent).
wait_emulator() {
  local name=$1 pid=$2
  if ! wait "$pid"; then
    cat "target/$name-start.log" >&2
    echo "$name did not start (see above and target/$name.log)" >&2
    exit 1
  fi
  emulator_starters=${emulator_starters/ $pid/}
  cat "target/$name-start.log"
}

# The AWS SDK talks to a DynamoDB/SQS emulator over real HTTP: moto's
# server, behind a launcher that serialises requests (stock moto can lose
# concurrent conditional writes, which our concurrency tests would catch).
step "DynamoDB/SQS emulator (moto)"
moto_port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/python" scripts/moto_server.py 127.0.0.1 "$moto_port" > target/moto.log 2>&1 &
moto_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$moto_port/moto-api/data.json" >/dev/null 2>&1 && break
  kill -0 "$moto_pid" 2>/dev/null || { cat target/moto.log >&2; exit 1; }
  sleep 0.2
done
export PIGEONHOLE_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true SAM_CLI_TELEMETRY=0
echo "moto listening on $PIGEONHOLE_TEST_AWS_ENDPOINT"

# tests/python/test_compose.py checks what it says against template.yaml
# and scripts/emulators.sh.
step "local/docker-compose.yml (docker-compose config: parsed and validated, no engine needed)"
docker-compose -p pigeonhole -f local/docker-compose.yml config -q

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

# One build of every target with the features the tests use, so the test
# step below reuses it instead of compiling the tree a second time.
step "build everything (binaries the end-to-end tests drive, test targets)"
cargo build --workspace --all-targets --all-features --locked
export PIGEONHOLE_LOCAL_BIN="$root/target/debug/pigeonhole-local"
export PIGEONHOLE_CLI_BIN="$root/target/debug/pigeonhole"
export PIGEONHOLE_INFRA_BIN="$root/target/debug/pigeonhole-infra"
export PIGEONHOLE_REGISTER_BIN="$root/target/debug/register"

step "Rust tests (unit, store contract, handlers, end-to-end)"
cargo test --workspace --all-features --locked

step "AWS emulators: waiting for DynamoDB Local and LocalStack"
wait_emulator dynamodb-local "$ddb_starter"
wait_emulator localstack "$localstack_starter"
PIGEONHOLE_TEST_DYNAMODB_LOCAL_ENDPOINT=$(tail -n 1 target/dynamodb-local.url)
PIGEONHOLE_TEST_LOCALSTACK_ENDPOINT=$(tail -n 1 target/localstack.url)
export PIGEONHOLE_TEST_DYNAMODB_LOCAL_ENDPOINT PIGEONHOLE_TEST_LOCALSTACK_ENDPOINT

# The DynamoDB store's suite once more, on AWS's own DynamoDB emulator.
# DynamoDB Local has no SQS: the few queues the suite provisions go to moto
# (PIGEONHOLE_TEST_SQS_ENDPOINT). Nor has it point-in-time recovery
# (UpdateContinuousBackups is an unknown operation there): the tables are
# made without it (PIGEONHOLE_TEST_AWS_NO_PITR, see tests/tests/aws_support),
# and the one test of provisioning itself, which checks that PITR is on,
# runs on moto only (above). The end-to-end suite below provisions its
# tables with PITR on LocalStack.
# PIGEONHOLE_TEST_AWS_CAPACITY=1: DynamoDB Local reports consumed capacity
# by DynamoDB's rules, so each_store_call_consumes_the_expected_capacity
# asserts its pinned read and write units here (on moto it cannot).
# (--workspace keeps the feature set of the build above, so nothing recompiles.)
step "DynamoDB store suite against DynamoDB Local"
PIGEONHOLE_TEST_AWS_ENDPOINT="$PIGEONHOLE_TEST_DYNAMODB_LOCAL_ENDPOINT" \
  PIGEONHOLE_TEST_SQS_ENDPOINT="http://127.0.0.1:$moto_port" PIGEONHOLE_TEST_AWS_NO_PITR=1 \
  PIGEONHOLE_TEST_AWS_CAPACITY=1 \
  cargo test --workspace --locked --all-features --test dynamodb_store -- \
  --skip provisioning_again_keeps_tables_queues_and_data

# The same end-to-end suite, with the local server serving from DynamoDB
# and SQS (--backend aws): the serverless data path, offline, on LocalStack.
step "end-to-end suite against the local server in --backend aws mode, on LocalStack"
PIGEONHOLE_E2E_BACKEND=aws PIGEONHOLE_TEST_AWS_ENDPOINT="$PIGEONHOLE_TEST_LOCALSTACK_ENDPOINT" \
  cargo test --workspace --locked --all-features \
  --test register --test messaging --test send --test errors --test operators \
  --test rate_limit --test concurrency --test persistence --test cli_client \
  --test cli_admin --test config --test cleanup --test at_rest --test faults --test limits \
  --test credentials --test abuse --test sent --test inbound \
  --test audiences --test publish_status --test expiry --test metrics
# Nothing below uses them: their memory and cores go to the builds.
scripts/emulators.sh stop all

# What `sam build` does for a deployment, for this machine's architecture
# (arm64 would need a toolchain target downloaded at build time), with the
# release profile as a deployment gets it (LTO, one codegen unit, size
# first: Cargo.toml). The runtime test below runs these very bootstraps,
# and their sizes are the ones printed here.
step "sam build (x86_64): one bootstrap per function"
PATH="$venv/bin:$PATH" "$venv/bin/sam" build --parameter-overrides Architecture=x86_64 \
  --build-dir target/sam-build
for f in RegisterFunction RotateFunction PublishFunction SendFunction PollFunction AckFunction \
  ListClientsFunction DeleteClientFunction SentFunction PublishStatusFunction SetTagsFunction \
  FanoutFunction CleanupFunction; do
  test -x "target/sam-build/$f/bootstrap" || { echo "sam build: no bootstrap for $f" >&2; exit 1; }
done
"$venv/bin/python" bench/function_sizes.py target/sam-build
export PIGEONHOLE_LAMBDA_BIN_DIR="$root/target/sam-build"

step "browser client and operators' console (headless Chromium)"
clients/browser/test/run.sh

# The same protocol module as a Node package (no dependencies to install).
step "pigeonhole.js under Node against the local server (node --test)"
(cd clients/browser && npm test)

step "OpenAPI description"
"$venv/bin/openapi-spec-validator" openapi.yaml

step "docs, Python client, SAM template, release binaries under a Lambda Runtime API (pytest)"
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -q tests/python

step "all checks passed"
