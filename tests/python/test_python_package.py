"""clients/python as an installable package (pyproject.toml, build_backend/pigeonhole_build.py).

- What scripts/test.sh installed into this environment: the distribution's
  metadata (version, dependencies, console scripts), py.typed beside each
  module, the console scripts and ``python -m`` running ``--help``.
- ``pip install ./clients/python`` offline: with no package index, and pip's
  build isolation on (nothing to download for the in-tree backend).
- The type hints reach a user: mypy --strict passes on the modules, and a
  program that imports the installed package is type-checked against them
  (no "missing library stubs or py.typed marker").
- The build backend itself: wheel contents and RECORD hashes, reproducible
  builds, an sdist that builds the same wheel, the editable wheel, and the
  TOML fallback for Pythons without tomllib.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

from installed import CLIENT_DIR, console_script, installed_module

PYPROJECT = tomllib.loads((CLIENT_DIR / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
MODULES = ("pigeonhole_client", "pigeonhole_operator")
SCRIPTS = {"pigeonhole-client": "pigeonhole_client:main", "pigeonhole-operator": "pigeonhole_operator:main"}


def _env() -> dict:
    """The environment for a command under test, without pip settings that point at package sources."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PIGEONHOLE_", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"))}


def _run(args, cwd: Path, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env or _env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def backend():
    """build_backend/pigeonhole_build.py, loaded from its path (as pip's backend-path does)."""
    spec = importlib.util.spec_from_file_location("pigeonhole_build", CLIENT_DIR / "build_backend" / "pigeonhole_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# The installed package
# ---------------------------------------------------------------------------

def test_installed_metadata_matches_pyproject_and_the_modules():
    dist = metadata.distribution(PROJECT["name"])
    modules = [installed_module(name) for name in MODULES]  # from site-packages, same bytes as the checkout
    assert dist.version == PROJECT["version"] == modules[0].__version__ == modules[1].__version__
    assert dist.metadata["Requires-Python"] == PROJECT["requires-python"]
    assert sorted(dist.requires or []) == sorted(PROJECT["dependencies"])
    assert "Typing :: Typed" in dist.metadata.get_all("Classifier")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == SCRIPTS == PROJECT["scripts"]
    installed = {str(f) for f in dist.files}
    for name, module in zip(MODULES, modules):
        # A package of one module: the single file as __init__.py, py.typed (PEP 561), __main__.py.
        assert {f"{name}/__init__.py", f"{name}/py.typed", f"{name}/__main__.py"} <= installed
        package_dir = Path(module.__file__).parent
        assert module.__file__ == str(package_dir / "__init__.py")
        assert (package_dir / "py.typed").is_file()
        assert "site-packages" in package_dir.parts


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_and_python_m_run(script, tmp_path):
    module = SCRIPTS[script].split(":")[0]
    path = console_script(script)
    helped = _run([path, "--help"], cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"usage: {script} "), helped.stdout[:200]
    version = _run([path, "--version"], cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"{script} {PROJECT['version']}"), version
    as_module = _run([sys.executable, "-m", module, "--help"], cwd=tmp_path)
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout.startswith(f"usage: python -m {module} "), as_module.stdout[:200]
    usage_error = _run([path, "--no-such-option"], cwd=tmp_path)
    assert usage_error.returncode == 2 and f"{script}: error:" in usage_error.stderr, usage_error.stderr


def test_pip_installs_the_checkout_offline(tmp_path):
    """What the README tells a user, with no package index at all and pip's build isolation on: the
    in-tree backend needs nothing downloaded. (--no-deps: requests and cryptography are this
    environment's; --target keeps it out of the environment the other tests use.)"""
    site = tmp_path / "site"
    out = _run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
                "--disable-pip-version-check", "--target", site, CLIENT_DIR], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in MODULES:
        assert (site / name / "py.typed").is_file()
        assert (site / name / "__init__.py").read_bytes() == (CLIENT_DIR / f"{name}.py").read_bytes()
    env = dict(_env(), PYTHONPATH=str(site))
    for script in SCRIPTS:
        version = _run([site / "bin" / script, "--version"], cwd=tmp_path, env=env)
        assert version.stdout.strip() == f"{script} {PROJECT['version']}", version
    assert not (CLIENT_DIR / "build").exists() and not list(CLIENT_DIR.glob("*.egg-info"))  # nothing left behind


def _readme_api_table() -> list:
    """The rows of the README's "Every API call" table: (api, library, command) cells."""
    text = (CLIENT_DIR / "README.md").read_text(encoding="utf-8")
    section = text.split("## Every API call\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no rows in the README's Every API call table"
    return [tuple(cell.strip() for cell in row) for row in rows]


def test_readme_names_a_call_and_a_command_for_every_api_operation():
    """Every operation of openapi.yaml under /api/v1 (but health) has a row in the README's table, and
    every library call and command the table names exists in the installed package."""
    import argparse
    import re

    import yaml

    from docutil import REPO

    spec = yaml.safe_load((REPO / "openapi.yaml").read_text(encoding="utf-8"))
    operations = {(method.upper(), path[len("/api/v1"):]) for path, item in spec["paths"].items()
                  if path.startswith("/api/v1/") and path != "/api/v1/health"
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    client, operator = (installed_module(name) for name in MODULES)
    commands = {}
    for script, module in (("pigeonhole-client", client), ("pigeonhole-operator", operator)):
        sub = next(a for a in module.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        commands[script] = set(sub.choices)
    documented = set()
    for api, library, command in _readme_api_table():
        documented |= {tuple(op.split(" ", 1)) for op in re.findall(r"`([A-Z]+ [^`]+)`", api)}
        for name in re.findall(r"`([^`]+)`", library):
            owner, _, attr = name.rpartition(".")
            target = {"": client, "PigeonholeClient": client.PigeonholeClient, "pigeonhole_operator": operator}[owner]
            assert callable(getattr(target, attr, None)), f"README names {name}, which does not exist"
        for cmd in re.findall(r"`([^`]+)`", command):
            script, subcommand = cmd.split(" ", 1)
            assert subcommand in commands[script], f"README names {cmd}, which does not exist"
    assert documented == operations


# ---------------------------------------------------------------------------
# Type hints
# ---------------------------------------------------------------------------

def test_modules_pass_mypy_strict(tmp_path):
    sources = [CLIENT_DIR / f"{name}.py" for name in MODULES] + [CLIENT_DIR / "build_backend" / "pigeonhole_build.py"]
    out = _run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", tmp_path / "cache", *sources],
               cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


CONSUMER = '''
from typing import List
import pigeonhole_client
from pigeonhole_client import Credentials, Messages, PigeonholeClient, PublishStatus, SentMessage
from pigeonhole_operator import ClientRecord, list_clients, set_tags


def listen_once(creds: Credentials) -> Messages:
    client = PigeonholeClient.from_credentials(creds)
    messages = client.poll()
    if messages.next_cursor is not None:
        client.ack(messages.next_cursor)
    return messages


def acknowledged(url: str, token: str, publish_id: str) -> int:
    status: PublishStatus = pigeonhole_client.publish_status(url, token, publish_id)
    return status.acknowledged


def sent(url: str, token: str, client_id: str) -> List[SentMessage]:
    return list(pigeonhole_client.iter_sent(url, token, client_id, after=0))


def tagged(url: str, token: str) -> List[ClientRecord]:
    set_tags(url, token, "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13", ["eu"])
    return list_clients(url, token, tag="eu")
'''

MISUSE = '''
from pigeonhole_client import PigeonholeClient
from pigeonhole_operator import set_tags

count: int = PigeonholeClient.register("https://example.invalid", "fingerprint-0123456789")
set_tags("https://example.invalid", "token", "id", [1])
'''


def test_a_program_type_checks_against_the_installed_package(tmp_path):
    """mypy finds the installed packages through py.typed: correct use passes --strict, and misuse is
    caught with the package's own types (a single-file module would be "missing library stubs or
    py.typed marker" and typed Any)."""
    (tmp_path / "consumer.py").write_text(textwrap.dedent(CONSUMER), encoding="utf-8")
    (tmp_path / "misuse.py").write_text(textwrap.dedent(MISUSE), encoding="utf-8")
    out = _run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", tmp_path / "cache",
                "consumer.py", "misuse.py"], cwd=tmp_path, timeout=300)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert out.returncode == 1 and len(errors) == 2, out.stdout + out.stderr
    assert errors[0].startswith("misuse.py:5: error: Incompatible types in assignment") and \
        '"Credentials"' in errors[0], errors
    assert errors[1].startswith("misuse.py:6: error:") and 'expected "str"' in errors[1], errors
    assert "py.typed" not in out.stdout and "import-untyped" not in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# The build backend
# ---------------------------------------------------------------------------

def _record_ok(whl: zipfile.ZipFile) -> dict:
    """Check RECORD against the wheel's entries; returns {path: bytes}."""
    names = whl.namelist()
    record_path = next(n for n in names if n.endswith(".dist-info/RECORD"))
    rows = [line.split(",") for line in whl.read(record_path).decode().splitlines()]
    assert sorted(r[0] for r in rows) == sorted(names)
    for path, digest, size in rows:
        if path == record_path:
            assert (digest, size) == ("", "")
            continue
        data = whl.read(path)
        want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert (digest, int(size)) == (want, len(data)), path
    return {n: whl.read(n) for n in names}


def test_wheel_contents_and_reproducible_builds(backend, tmp_path):
    first, second = tmp_path / "1", tmp_path / "2"
    first.mkdir()
    second.mkdir()
    name = backend.build_wheel(str(first))
    assert name == f"pigeonhole_client-{PROJECT['version']}-py3-none-any.whl"
    assert backend.build_wheel(str(second)) == name
    assert (first / name).read_bytes() == (second / name).read_bytes()
    with zipfile.ZipFile(first / name) as whl:
        files = _record_ok(whl)
    info = f"pigeonhole_client-{PROJECT['version']}.dist-info"
    assert set(files) == {f"{m}/{f}" for m in MODULES for f in ("__init__.py", "py.typed", "__main__.py")} | \
        {f"{info}/{f}" for f in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt")}
    meta = Parser().parsestr(files[f"{info}/METADATA"].decode())
    assert (meta["Name"], meta["Version"]) == (PROJECT["name"], PROJECT["version"])
    assert meta.get_payload() == (CLIENT_DIR / "README.md").read_text(encoding="utf-8")
    assert "Tag: py3-none-any" in files[f"{info}/WHEEL"].decode()
    assert files[f"{info}/entry_points.txt"].decode() == \
        "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(SCRIPTS.items()))


def test_sdist_builds_the_same_wheel(backend, tmp_path):
    """An sdist holds everything a build needs: the wheel built from it is byte for byte the same."""
    name = backend.build_sdist(str(tmp_path))
    base = f"pigeonhole_client-{PROJECT['version']}"
    assert name == f"{base}.tar.gz"
    with tarfile.open(tmp_path / name) as tar:
        members = sorted(m.name for m in tar.getmembers())
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert members == sorted(f"{base}/{f}" for f in (
        "PKG-INFO", "pyproject.toml", "README.md", "build_backend/pigeonhole_build.py",
        "pigeonhole_client.py", "pigeonhole_operator.py"))
    src = tmp_path / "unpacked" / base
    (tmp_path / "from-sdist").mkdir()
    (tmp_path / "from-checkout").mkdir()
    built = _run([sys.executable, "-c", "import sys; sys.path.insert(0, 'build_backend'); import pigeonhole_build; "
                  f"print(pigeonhole_build.build_wheel({str(tmp_path / 'from-sdist')!r}))"], cwd=src)
    assert built.returncode == 0, built.stderr
    wheel = built.stdout.strip()
    assert wheel == backend.build_wheel(str(tmp_path / "from-checkout"))
    assert (tmp_path / "from-sdist" / wheel).read_bytes() == (tmp_path / "from-checkout" / wheel).read_bytes()
    with tarfile.open(tmp_path / name) as tar:
        pkg_info = tar.extractfile(f"{base}/PKG-INFO").read()
    with zipfile.ZipFile(tmp_path / "from-checkout" / wheel) as whl:
        assert pkg_info == whl.read(f"{base}.dist-info/METADATA")


def test_editable_wheel_points_at_the_checkout(backend, tmp_path):
    name = backend.build_editable(str(tmp_path))
    with zipfile.ZipFile(tmp_path / name) as whl:
        files = _record_ok(whl)
    pth = [n for n in files if n.endswith(".pth")]
    assert len(pth) == 1 and files[pth[0]].decode().strip() == str(CLIENT_DIR.resolve())
    assert not any(n.endswith(".py") for n in files)
    metadata_dir = tmp_path / "meta"
    metadata_dir.mkdir()
    info = backend.prepare_metadata_for_build_editable(str(metadata_dir))
    assert (metadata_dir / info / "METADATA").read_bytes() == files[f"{info}/METADATA"]


def test_backend_needs_only_the_standard_library_of_python_3_9():
    """Whatever a build environment holds, even nothing at all, the backend imports."""
    import ast

    path = CLIENT_DIR / "build_backend" / "pigeonhole_build.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert PYPROJECT["build-system"] == {"requires": [], "build-backend": "pigeonhole_build",
                                         "backend-path": ["build_backend"]}


def test_toml_fallback_reads_pyproject_like_tomllib(backend):
    """Python 3.9 and 3.10 have no tomllib: the backend's own reader must see the same pyproject.toml."""
    text = (CLIENT_DIR / "pyproject.toml").read_text(encoding="utf-8")
    assert backend.parse_toml_subset(text) == tomllib.loads(text)
    for bad in ('[project]\nname = { text = "x" }\n', '[[x]]\n', 'a = "b\\"c"\n', 'a = [\n "b"\n', 'a = 1\n',
                '[project]\nname = "a"\nname = "b"\n'):
        with pytest.raises(ValueError):
            backend.parse_toml_subset(bad)
    assert backend.parse_toml_subset('# c\n[a.b]  # c\nk = ["x", # c\n  "y#z",\n]\n') == {"a": {"b": {"k": ["x", "y#z"]}}}
