"""Run the real release Lambda binaries under cargo-lambda's Runtime API emulator.

What `test_lambda_runtime.py` builds on:

* `function_binaries()`: the release bootstraps, from `PIGEONHOLE_LAMBDA_BIN_DIR`
  (either layout: `<dir>/<function>`, `<dir>/<function>/bootstrap` as
  `cargo lambda build` writes them, or `<dir>/<LogicalId>/bootstrap` as
  `sam build` writes them) or else built once with cargo.
* `start_moto()`: `scripts/moto_server.py` on a free loopback port (only when
  `PIGEONHOLE_TEST_AWS_ENDPOINT` names no emulator already running).
* `provision()`: `pigeonhole-infra` creates a uniquely prefixed set of tables
  and queues and returns the environment it wrote.
* `start_watch()`: `cargo lambda watch --only-lambda-apis`, the Runtime API
  and the function URLs, with no function of its own.
* `start_function()`: one bootstrap pointed at the Runtime API, with the
  environment the template gives that function and only its secrets.
* `invoke()`: `cargo lambda invoke --data-file`, for the non-HTTP functions.

Every process starts in its own process group and `stop()` ends the whole
group, so nothing outlives the test session.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The venv this pytest runs in (target/pyenv) holds moto, boto3 and the
# cargo-lambda wheel (with ziglang).
VENV_BIN = Path(sys.executable).parent

REGION = "us-east-1"

# Every binary of the functions crate, and the secrets each one gets: the
# same split as template.yaml (least privilege). The HTTP functions' follow
# `Route::secrets()` in shared/src/http/routes.rs.
SECRETS = {
    "register": ("ADMIN_TOKEN", "TOKEN_KEY", "FINGERPRINT_KEY", "WRAPPING_KEY"),
    "rotate": ("TOKEN_KEY", "FINGERPRINT_KEY", "WRAPPING_KEY"),
    "publish": ("ADMIN_TOKEN", "AT_REST_KEY"),
    "send": ("TOKEN_KEY", "WRAPPING_KEY", "AT_REST_KEY"),
    "poll": ("TOKEN_KEY", "WRAPPING_KEY"),
    "ack": ("TOKEN_KEY",),
    "list-clients": ("OPERATOR_TOKENS",),
    "delete-client": ("OPERATOR_TOKENS",),
    "sent": ("ADMIN_TOKEN", "AT_REST_KEY"),
    "publish-status": ("ADMIN_TOKEN",),
    "set-tags": ("OPERATOR_TOKENS",),
    "fanout": ("WRAPPING_KEY", "AT_REST_KEY"),
    "cleanup": (),
}
FUNCTIONS = tuple(SECRETS)

# Settings only one function receives in the template.
ONLY_FOR = {
    # The fan-out enqueues the rest of a job it could not finish in time.
    "FANOUT_QUEUE_URL": ("publish", "fanout"),
    "POLL_RATE_LIMIT": ("poll",),
    "ACKED_RETENTION_SECS": ("cleanup",),
    "SENT_RETENTION_SECS": ("cleanup",),
}

# The table variables every function gets (template Globals).
TABLE_VARS = (
    "CLIENTS_TABLE",
    "FINGERPRINTS_TABLE",
    "MESSAGES_TABLE",
    "CLIENT_MESSAGES_TABLE",
    "DEDUP_TABLE",
    "AUDIENCES_TABLE",
)

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_env(extra: dict | None = None) -> dict:
    """The environment for cargo and cargo-lambda: the venv's bin first on
    PATH, because cargo-lambda finds zig through the first `python3` there."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra or {})
    return env


def aws_env(endpoint: str) -> dict:
    """Dummy credentials and a fixed region for the SDK, pointed at the emulator."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return _read(self.stdout_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)

    def logs(self, tail: int = 40) -> str:
        out = self.stdout().splitlines()[-tail:]
        err = self.stderr().splitlines()[-tail:]
        return (f"--- {self.name} stdout ---\n" + "\n".join(out)
                + f"\n--- {self.name} stderr ---\n" + "\n".join(err))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def spawn(name: str, args: list, logdir: Path, env: dict, cwd: Path = REPO) -> Proc:
    """Start `args` in a new process group, stdout and stderr to files."""
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logdir / f"{name}.stdout.log", logdir / f"{name}.stderr.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        popen = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, env=env, cwd=cwd, start_new_session=True)
    return Proc(name, popen, out_path, err_path)


def stop(proc: Proc | None, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    if proc is None:
        return
    pgid = proc.popen.pid  # start_new_session: the leader's pid is the group id
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no child of it is left behind.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break


def wait_http(url: str, proc: Proc, timeout: float = START_TIMEOUT) -> None:
    """Wait until `url` answers with any HTTP status (the server is up)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode} before answering "
                        f"{url}\n{proc.logs()}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError as e:
            last = e
        time.sleep(0.1)
    pytest.fail(f"{proc.name} did not answer {url} within {timeout}s ({last})\n{proc.logs()}",
                pytrace=False)


# ---------------------------------------------------------------------------
# The binaries
# ---------------------------------------------------------------------------

def _logical_id(function: str) -> str:
    """`list-clients` -> `ListClientsFunction`, the template's logical ID."""
    return "".join(part.capitalize() for part in function.split("-")) + "Function"


_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def _elf_arch(path: Path) -> str | None:
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    (machine,) = struct.unpack("<H", header[18:20])
    return _ELF_MACHINES.get(machine, f"machine {machine}")


def _host_arch() -> str:
    machine = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def binaries_from_dir(directory: Path) -> dict:
    """Each function's bootstrap under `directory`, in any of the layouts."""
    found, missing = {}, []
    for function in FUNCTIONS:
        candidates = [
            directory / function,                           # target/release/<bin>
            directory / function / "bootstrap",             # target/lambda/<bin>/bootstrap
            directory / _logical_id(function) / "bootstrap",  # .aws-sam/build/<LogicalId>/bootstrap
        ]
        path = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
        if path is None:
            missing.append(f"{function} (looked for {', '.join(str(c) for c in candidates)})")
            continue
        arch, host = _elf_arch(path), _host_arch()
        if arch is not None and arch != host:
            pytest.fail(
                f"{path} is built for {arch}, but this machine is {host}: it cannot run here. "
                f"Point PIGEONHOLE_LAMBDA_BIN_DIR at a build for {host} (e.g. target/release after "
                "`cargo build --release -p pigeonhole-functions`, or `sam build` with "
                f"`--parameter-overrides Architecture={host.replace('aarch64', 'arm64')}`).",
                pytrace=False)
        found[function] = path
    if missing:
        pytest.fail("PIGEONHOLE_LAMBDA_BIN_DIR lacks bootstraps for: " + "; ".join(missing),
                    pytrace=False)
    return found


def build_release() -> tuple:
    """`cargo build --release -p pigeonhole-functions`; returns (binaries, seconds).

    LTO off and 16 codegen units: the same opt-level as the shipped profile
    (lto = true, codegen-units = 1), so the code under test is optimised the
    same way, but it builds several minutes faster on a 2-core machine. The
    fat-LTO build itself is what `sam build` produces and checks.
    """
    env = tool_env({
        "CARGO_PROFILE_RELEASE_LTO": "false",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
    })
    started = time.monotonic()
    result = subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "pigeonhole-functions"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-60:])
        pytest.fail(f"cargo build --release -p pigeonhole-functions failed:\n{tail}", pytrace=False)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return binaries_from_dir(target / "release"), seconds


def function_binaries() -> tuple:
    """(binaries, build seconds or None when PIGEONHOLE_LAMBDA_BIN_DIR was used)."""
    directory = os.environ.get("PIGEONHOLE_LAMBDA_BIN_DIR")
    if directory:
        path = Path(directory)
        if not path.is_absolute():
            path = REPO / path
        return binaries_from_dir(path), None
    return build_release()


# ---------------------------------------------------------------------------
# The emulated AWS services
# ---------------------------------------------------------------------------

def start_moto(logdir: Path) -> tuple:
    """scripts/moto_server.py on a free port; returns (endpoint, Proc)."""
    port = free_port()
    proc = spawn("moto", [sys.executable, REPO / "scripts" / "moto_server.py", "127.0.0.1", port],
                 logdir, tool_env())
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint + "/moto-api/data.json", proc)
    return endpoint, proc


def provision(endpoint: str, prefix: str, env_file: Path) -> dict:
    """Create the tables and queues under `prefix`; return the env infra wrote."""
    infra = os.environ.get("PIGEONHOLE_INFRA_BIN")
    command = [infra] if infra else ["cargo", "run", "-q", "--locked", "-p", "pigeonhole-infra", "--"]
    command += ["--endpoint-url", endpoint, "--prefix", prefix, "--region", REGION,
                "--env-file", str(env_file)]
    result = subprocess.run(command, cwd=REPO, env=tool_env(aws_env(endpoint)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"pigeonhole-infra failed ({result.returncode}):\n{result.stdout}", pytrace=False)
    env = {}
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    missing = [k for k in (*TABLE_VARS, "FANOUT_QUEUE_URL") if not env.get(k)]
    assert not missing, f"pigeonhole-infra wrote no {missing}: {env}"
    return env


# ---------------------------------------------------------------------------
# cargo-lambda
# ---------------------------------------------------------------------------

def cargo_lambda() -> Path:
    path = VENV_BIN / "cargo-lambda"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"cargo-lambda is not installed in {VENV_BIN}: "
                    f"{VENV_BIN / 'pip'} install -r tests/requirements-aws.txt "
                    "(PyPI's cargo-lambda wheel; never `cargo install cargo-lambda`)",
                    pytrace=False)
    return path


@dataclass
class Watch:
    port: int
    proc: Proc

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def runtime_api(self, function: str) -> str:
        return f"{self.origin}/.rt/{function}"

    def url(self, function: str, path: str) -> str:
        """The function URL of `function` for `path` (e.g. `/api/v1/messages/poll`)."""
        return f"{self.origin}/lambda-url/{function}{path}"


def start_watch(logdir: Path, name: str = "watch", timeout: int = 30) -> Watch:
    """`cargo lambda watch --only-lambda-apis`: the Runtime API and function
    URLs only. `-A 127.0.0.1` always: its default binds every interface.

    It runs in the repository: it answers only for function names that are
    binaries of the workspace (others get 404). An invocation no runtime
    takes within `timeout` seconds gets 408."""
    tool = cargo_lambda()
    last = None
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        proc = spawn(f"cargo-lambda-{name}-{attempt}",
                     [tool, "lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", port,
                      "--timeout", timeout],
                     logdir, tool_env({"RUST_LOG": "info"}))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.alive():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return Watch(port, proc)
            except OSError:
                time.sleep(0.1)
        last = proc
        stop(proc)
    pytest.fail(f"cargo lambda watch did not listen\n{last.logs() if last else ''}", pytrace=False)


def start_function(watch: Watch, name: str, binary: Path, env: dict, logdir: Path,
                   log_name: str | None = None) -> Proc:
    """Start one bootstrap against the Runtime API as function `name`. `env`
    is the function's configuration (tables, secrets, settings, AWS)."""
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_RUNTIME_API": watch.runtime_api(name),
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        # What the template's LoggingConfig (LogFormat: JSON) makes Lambda set.
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "RUST_LOG": "info",
        **env,
    }
    proc = spawn(f"fn-{log_name or name}", [binary], logdir, full)
    proc.extra["env"] = full
    return proc


def invoke(watch: Watch, function: str, event: dict, workdir: Path, timeout: float = 30.0):
    """`cargo lambda invoke <function> --data-file`; returns CompletedProcess.

    `--invoke-address` always: the default is ::1."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"event-{function}-{time.monotonic_ns()}.json"
    data.write_text(json.dumps(event, indent=2))
    return subprocess.run(
        [cargo_lambda(), "lambda", "invoke", function, "--invoke-address", "127.0.0.1",
         "--invoke-port", str(watch.port), "--data-file", str(data), "--output-format", "json"],
        cwd=REPO, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=timeout)


def json_log_lines(text: str) -> list:
    """The JSON objects among `text`'s lines (the functions log one per line)."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    return lines
