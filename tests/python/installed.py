"""The Python clients as the tests use them: the installed package, not the checkout.

scripts/test.sh installs ``clients/python`` into the test environment the way
a user does (``pip install --no-index ./clients/python``). The tests import
``pigeonhole_client`` and ``pigeonhole_operator`` from there and run the
console scripts it put in the environment's bin directory. Nothing puts
``clients/python`` on ``sys.path``: only the tests of the single files as
copied (test_reference_client.py) run them from a directory of their own.

``installed_module`` refuses, with the command to run, a module that is
missing, would come from the checkout (an editable install), or differs from
the checkout's file (installed before the last edit): the tests must not pass
against stale code.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

from docutil import REPO

CLIENT_DIR = REPO / "clients" / "python"
INSTALL = f"{sys.executable} -m pip install --no-index {CLIENT_DIR}"


def installed_module(name: str) -> ModuleType:
    """``import name`` from the installed package, checked to be the checkout's file as installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"{name} is not installed in {sys.prefix}; install it with: {INSTALL}")
    origin = Path(spec.origin).resolve()
    if CLIENT_DIR.resolve() in origin.parents:
        raise ImportError(f"{name} would be imported from the checkout ({origin}), not the installed package "
                          f"(an editable install?); install it with: {INSTALL}")
    source = CLIENT_DIR / f"{name}.py"
    if origin.read_bytes() != source.read_bytes():
        raise ImportError(f"the installed {name} ({origin}) is not {source} as it is now; reinstall: {INSTALL}")
    return importlib.import_module(name)


def console_script(name: str) -> Path:
    """The path of an installed console script (``pigeonhole-client``, ``pigeonhole-operator``)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        raise FileNotFoundError(f"no console script {path}; install the package with: {INSTALL}")
    return path
