"""Start and stop the real `pigeonhole-local` binary on a free loopback port."""
from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from docutil import REPO

DEFAULT_BIN = REPO / "target" / "debug" / "pigeonhole-local"
STARTUP_TIMEOUT = 15.0


@dataclass
class Server:
    origin: str  # e.g. http://127.0.0.1:40123
    admin_token: str | None
    operator_token: str | None
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen
    stdout_lines: list = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.origin + "/api/v1"

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-n:])


def server_binary() -> Path:
    path = Path(os.environ.get("PIGEONHOLE_LOCAL_BIN") or DEFAULT_BIN)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"pigeonhole-local binary not found at {path}. Build it with "
            "`cargo build -p pigeonhole-local` (from the repository root) or point "
            "PIGEONHOLE_LOCAL_BIN at it.",
            pytrace=False,
        )
    return path


def start_server(tmp: Path, admin_token: str | None, operator_token: str | None,
                 extra_env=None, default_config: bool = False) -> Server:
    """Start pigeonhole-local on 127.0.0.1:0 (the OS picks a free port; the server
    prints the bound address) and wait for `listening on http://ADDR`.

    With default_config, only `--listen` is given and no secret is set: the server
    uses its defaults (`./data` under `tmp`) and generates the secrets.
    """
    binary = server_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / "data"
    log_path = tmp / "server.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp)),
        "RUST_LOG": "info",
    }
    args = [str(binary), "--listen", "127.0.0.1:0"]
    if not default_config:
        data_dir.mkdir(parents=True, exist_ok=True)
        args += ["--data-dir", str(data_dir), "--cleanup-interval-secs", "3600"]
        env["MASTER_KEY"] = base64.b64encode(bytes(range(100, 132))).decode()
    if admin_token is not None:
        env["ADMIN_TOKEN"] = admin_token
    if operator_token is not None:
        env["OPERATOR_TOKENS"] = operator_token
    env.update(extra_env or {})
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp)
    log.close()
    lines: "queue.Queue[str | None]" = queue.Queue()
    seen: list[str] = []

    def pump():  # keeps reading so the pipe never fills up
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            seen.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    origin = None
    while origin is None:
        left = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            line = ""
            if time.monotonic() >= deadline:
                proc.kill()
                pytest.fail(f"pigeonhole-local printed no 'listening on' line within "
                            f"{STARTUP_TIMEOUT}s; stdout: {seen}\n{log_path.read_text(errors='replace')}")
        if line is None:
            proc.wait()
            pytest.fail(f"pigeonhole-local exited with {proc.returncode} before listening; "
                        f"stdout: {seen}\nlog:\n{log_path.read_text(errors='replace')}")
        if line and line.startswith("listening on http://"):
            origin = line.split("listening on ", 1)[1].strip()
    return Server(origin, admin_token, operator_token, data_dir, log_path, proc, seen)


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
