"""The build backend of the Pigeonhole Python clients (PEP 517 and PEP 660), standard library only.

Why a backend of our own: ``pip install ./clients/python`` must work offline,
from the checkout. pip builds a project in an isolated environment and first
downloads what ``build-system.requires`` names (setuptools, hatchling, ...),
which needs the network. ``--no-build-isolation`` only helps where the build
tools happen to be installed: Python 3.12+ venvs ship no setuptools, and the
setuptools of a 3.11 venv cannot build a wheel without the separate ``wheel``
package. This backend is in the tree (``backend-path``) and needs nothing, so
pip's isolated build has nothing to fetch.

Why the single files are installed as packages: PEP 561 marks inline type
hints with a ``py.typed`` file inside a package, and a top-level module cannot
carry one (mypy then reports "missing library stubs or py.typed marker"). So
each module listed in ``[tool.pigeonhole-build]`` is installed as a package of
one module: ``pigeonhole_client.py`` becomes ``pigeonhole_client/__init__.py``,
unchanged, beside ``py.typed`` and a two-line ``__main__.py`` (for ``python -m
pigeonhole_client``). ``import pigeonhole_client`` runs the very same file, and
the checkout keeps the single files for those who copy one.

The metadata comes from ``[project]`` in pyproject.toml; a key this backend
does not know is an error rather than metadata silently dropped. Wheels and
sdists are reproducible: fixed timestamps (``SOURCE_DATE_EPOCH`` if set),
sorted entries, fixed modes.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

__version__ = "1.0.0"

#: The project directory: this file lives in ``<project>/build_backend/``.
ROOT = Path(__file__).resolve().parent.parent

#: The ``[project]`` keys this backend turns into metadata.
PROJECT_KEYS = {"name", "version", "description", "readme", "requires-python", "dependencies",
                "classifiers", "keywords", "scripts"}

#: What an sdist holds besides the modules (paths relative to ROOT).
SDIST_FILES = ("pyproject.toml", "README.md", "build_backend/pigeonhole_build.py")


# ---------------------------------------------------------------------------
# pyproject.toml
# ---------------------------------------------------------------------------

def read_pyproject(root: Path = ROOT) -> Dict[str, Any]:
    """pyproject.toml as a dict: ``tomllib`` on Python 3.11+, else :func:`parse_toml_subset`."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return parse_toml_subset(text)
    return tomllib.loads(text)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _code_and_brackets(line: str) -> Tuple[str, int]:
    """The line without its comment, and its ``[`` minus ``]`` outside strings."""
    quote: Optional[str] = None
    depth = 0
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i], depth
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
    return line, depth


def parse_toml_subset(text: str) -> Dict[str, Any]:
    """The part of TOML that this project's pyproject.toml uses, for Pythons without ``tomllib``.

    ``[table.sub]`` headers with bare keys, and ``key = value`` where the value
    is a string or an array of strings (an array may span lines), with
    comments. Strings may not contain backslashes. Anything else raises
    ``ValueError`` naming the line; a test checks that the result equals
    ``tomllib``'s for the real file.
    """
    import ast

    doc: Dict[str, Any] = {}
    table = doc
    pending: Optional[Tuple[int, str, str, int]] = None  # line number, key, value so far, open brackets
    for number, raw in enumerate(text.splitlines(), 1):
        if "\\" in raw:
            raise ValueError(f"pyproject.toml:{number}: backslashes are not supported without tomllib")
        code, depth = _code_and_brackets(raw)
        if pending:
            start, key, value, open_ = pending
            value, open_ = value + "\n" + code, open_ + depth
        else:
            code = code.strip()
            if not code:
                continue
            if code.startswith("["):
                if code.startswith("[[") or not code.endswith("]"):
                    raise ValueError(f"pyproject.toml:{number}: unsupported table header {code!r}")
                table = doc
                for part in code[1:-1].strip().split("."):
                    part = part.strip()
                    if not _BARE_KEY.match(part):
                        raise ValueError(f"pyproject.toml:{number}: unsupported table name {code!r}")
                    table = table.setdefault(part, {})
                continue
            key, sep, value = code.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _BARE_KEY.match(key):
                raise ValueError(f"pyproject.toml:{number}: expected key = value, got {code!r}")
            start, open_ = number, depth
        if open_ > 0:
            pending = (start, key, value, open_)
            continue
        pending = None
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"pyproject.toml:{start}: unsupported value for {key!r}") from None
        if not (isinstance(parsed, str) or (isinstance(parsed, list) and all(isinstance(v, str) for v in parsed))):
            raise ValueError(f"pyproject.toml:{start}: {key!r} must be a string or an array of strings")
        if key in table:
            raise ValueError(f"pyproject.toml:{start}: {key!r} given twice")
        table[key] = parsed
    if pending:
        raise ValueError(f"pyproject.toml:{pending[0]}: unclosed array for {pending[1]!r}")
    return doc


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------

class Project:
    """What ``[project]`` and ``[tool.pigeonhole-build]`` say, checked."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        data = read_pyproject(root)
        project = data.get("project")
        if not isinstance(project, dict):
            raise ValueError("pyproject.toml has no [project] table")
        unknown = set(project) - PROJECT_KEYS
        if unknown:
            raise ValueError(f"pyproject.toml: [project] keys this backend does not support: {sorted(unknown)}")
        self.project: Dict[str, Any] = project
        self.name: str = project["name"]
        self.version: str = project["version"]
        modules = data.get("tool", {}).get("pigeonhole-build", {}).get("modules")
        if not modules or not all(isinstance(m, str) and m.isidentifier() for m in modules):
            raise ValueError("pyproject.toml: [tool.pigeonhole-build] modules must list module names")
        self.modules: List[str] = list(modules)
        for module in self.modules:
            if not (root / f"{module}.py").is_file():
                raise ValueError(f"pyproject.toml: module {module!r} has no file {module}.py")
        self.scripts: Dict[str, str] = dict(project.get("scripts", {}))

    @property
    def dist(self) -> str:
        """The name as wheel and sdist file names spell it (normalized, ``_`` for runs of ``-_.``)."""
        return re.sub(r"[-_.]+", "_", self.name).lower()

    @property
    def dist_info(self) -> str:
        return f"{self.dist}-{self.version}.dist-info"

    def metadata(self) -> str:
        """Core metadata 2.2: the dist-info METADATA and the sdist PKG-INFO."""
        p = self.project
        lines = ["Metadata-Version: 2.2", f"Name: {self.name}", f"Version: {self.version}"]
        if "description" in p:
            lines.append(f"Summary: {p['description']}")
        if "keywords" in p:
            lines.append(f"Keywords: {','.join(p['keywords'])}")
        if "requires-python" in p:
            lines.append(f"Requires-Python: {p['requires-python']}")
        lines += [f"Classifier: {c}" for c in p.get("classifiers", [])]
        lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
        body = ""
        if "readme" in p:
            readme = p["readme"]
            if not isinstance(readme, str) or not readme.endswith(".md"):
                raise ValueError("pyproject.toml: readme must name a Markdown file")
            lines.append("Description-Content-Type: text/markdown")
            body = "\n" + (self.root / readme).read_text(encoding="utf-8")
        return "\n".join(lines) + "\n" + body

    def entry_points(self) -> str:
        if not self.scripts:
            return ""
        return "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(self.scripts.items()))

    def dist_info_files(self) -> Dict[str, bytes]:
        """Everything in the .dist-info directory except RECORD."""
        wheel = ("Wheel-Version: 1.0\n"
                 f"Generator: pigeonhole_build {__version__}\n"
                 "Root-Is-Purelib: true\n"
                 "Tag: py3-none-any\n")
        files = {"METADATA": self.metadata(), "WHEEL": wheel, "top_level.txt": "".join(m + "\n" for m in self.modules)}
        if self.scripts:
            files["entry_points.txt"] = self.entry_points()
        return {f"{self.dist_info}/{name}": text.encode("utf-8") for name, text in files.items()}

    def package_files(self) -> Dict[str, bytes]:
        """Each module as a package of one module: __init__.py (the file itself), py.typed, __main__.py."""
        files: Dict[str, bytes] = {}
        for module in self.modules:
            files[f"{module}/__init__.py"] = (self.root / f"{module}.py").read_bytes()
            files[f"{module}/py.typed"] = b""
            files[f"{module}/__main__.py"] = (
                f'"""``python -m {module}``: the command line of {module}."""\n'
                f"from {module} import main\n\nraise SystemExit(main())\n").encode("utf-8")
        return files

    def editable_files(self) -> Dict[str, bytes]:
        """A .pth file that puts the project directory on sys.path: the single files, imported in place."""
        return {f"__editable__.{self.dist}-{self.version}.pth": (str(self.root) + "\n").encode("utf-8")}


# ---------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------

def _timestamp() -> int:
    """SOURCE_DATE_EPOCH if set, else 1980-01-01 (the earliest date a zip file can hold)."""
    return max(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), 315532800)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"sha256={digest}"


def _write_wheel(project: Project, directory: str, files: Mapping[str, bytes]) -> str:
    """Write a py3-none-any wheel of ``files`` plus the dist-info (RECORD last); returns its file name."""
    entries = dict(sorted(files.items()))
    entries.update(sorted(project.dist_info_files().items()))
    record_path = f"{project.dist_info}/RECORD"
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries.items())
    entries[record_path] = (record + f"{record_path},,\n").encode("utf-8")
    name = f"{project.dist}-{project.version}-py3-none-any.whl"
    date = time.gmtime(_timestamp())[:6]
    with zipfile.ZipFile(Path(directory) / name, "w", compression=zipfile.ZIP_DEFLATED) as whl:
        for path, data in entries.items():
            info = zipfile.ZipInfo(path, date_time=date)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data)
    return name


def _write_metadata_dir(project: Project, metadata_directory: str) -> str:
    for path, data in project.dist_info_files().items():
        target = Path(metadata_directory) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return project.dist_info


# ---------------------------------------------------------------------------
# The PEP 517 / PEP 660 hooks
# ---------------------------------------------------------------------------

def get_requires_for_build_wheel(config_settings: Optional[Mapping[str, Any]] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[Mapping[str, Any]] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[Mapping[str, Any]] = None) -> List[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: Optional[Mapping[str, Any]] = None) -> str:
    return _write_metadata_dir(Project(), metadata_directory)


def prepare_metadata_for_build_editable(metadata_directory: str,
                                        config_settings: Optional[Mapping[str, Any]] = None) -> str:
    return _write_metadata_dir(Project(), metadata_directory)


def build_wheel(wheel_directory: str, config_settings: Optional[Mapping[str, Any]] = None,
                metadata_directory: Optional[str] = None) -> str:
    project = Project()
    return _write_wheel(project, wheel_directory, project.package_files())


def build_editable(wheel_directory: str, config_settings: Optional[Mapping[str, Any]] = None,
                   metadata_directory: Optional[str] = None) -> str:
    project = Project()
    return _write_wheel(project, wheel_directory, project.editable_files())


def build_sdist(sdist_directory: str, config_settings: Optional[Mapping[str, Any]] = None) -> str:
    project = Project()
    base = f"{project.dist}-{project.version}"
    files = {path: (project.root / path).read_bytes()
             for path in (*SDIST_FILES, *(f"{m}.py" for m in project.modules))}
    files["PKG-INFO"] = project.metadata().encode("utf-8")
    name = f"{base}.tar.gz"
    mtime = _timestamp()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{base}/{path}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    with open(Path(sdist_directory) / name, "wb") as out:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=mtime) as gz:
            gz.write(raw.getvalue())
    return name

