#!/usr/bin/env python3
"""The size of each Lambda bootstrap and of the zip a deployment uploads.

    python3 bench/function_sizes.py DIR [DIR ...] [--json]

Each DIR holds bootstraps as `sam build` writes them
(`<LogicalId>/bootstrap`), as `cargo lambda build` does
(`<binary>/bootstrap`), or as `cargo build` does (`<binary>`, for the
binaries of the functions crate). The zip is made the way `sam package`
makes it (deflate, the `bootstrap` entry executable), in memory. Several
DIRs are printed side by side, so two builds compare at a glance.
"""
from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

FUNCTIONS = ["register", "rotate", "publish", "send", "poll", "ack", "list-clients",
             "delete-client", "sent", "publish-status", "set-tags", "fanout", "cleanup"]
MB = 1_000_000


def bootstraps(directory: Path) -> dict[str, Path]:
    """{name: path} of the bootstraps found in `directory`, in any layout."""
    found = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and (entry / "bootstrap").is_file():
            found[entry.name] = entry / "bootstrap"
        elif entry.is_file() and entry.name in FUNCTIONS + ["hello-lambda"]:
            found[entry.name] = entry
    return found


def zipped_size(path: Path) -> int:
    """Bytes of a deployment zip holding `path` as `bootstrap`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, path.read_bytes())
    return len(buffer.getvalue())


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    dirs = [Path(a) for a in argv if a != "--json"]
    if not dirs:
        print(__doc__, file=sys.stderr)
        return 2
    sizes = {str(d): {name: (p.stat().st_size, zipped_size(p)) for name, p in bootstraps(d).items()}
             for d in dirs}
    if as_json:
        print(json.dumps(sizes, indent=2))
        return 0
    names = sorted({n for per_dir in sizes.values() for n in per_dir})
    header = f"{'MB (binary / zip)':<24}" + "".join(f"{d[-28:]:>30}" for d in sizes)
    print(header)
    for name in names:
        cells = []
        for per_dir in sizes.values():
            binary, zipped = per_dir.get(name, (0, 0))
            cells.append(f"{binary / MB:>19.2f} / {zipped / MB:>6.2f}" if binary else f"{'-':>30}")
        print(f"{name:<24}" + "".join(cells))
    for d, per_dir in sizes.items():
        if per_dir:
            largest = max(z for _, z in per_dir.values())
            print(f"largest zip in {d}: {largest / MB:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
