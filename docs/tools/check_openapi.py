#!/usr/bin/env python3
"""Check that openapi.yaml documents exactly the routes Pigeonhole serves.

Usage: python3 docs/tools/check_openapi.py [path/to/openapi.yaml]
The default path is openapi.yaml at the repository root. The script needs PyYAML.
It exits 0 when the (method, path) pairs in the spec equal EXPECTED_ROUTES,
1 when they differ, and 2 when the spec can't be read.
"""

import sys
from pathlib import Path

# Keep this in sync with the router (and with docs/api.md).
EXPECTED_ROUTES = {
    ("GET", "/health"),
    ("GET", "/api/v1/health"),
    ("POST", "/api/v1/clients/register"),
    ("POST", "/api/v1/messages/publish"),
    ("POST", "/api/v1/messages/send"),
    ("GET", "/api/v1/messages/poll"),
    ("POST", "/api/v1/messages/ack"),
    ("GET", "/api/v1/operators/clients"),
}

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def fail(code, msg):
    print(f"check_openapi: {msg}", file=sys.stderr)
    sys.exit(code)


try:
    import yaml
except ImportError:
    fail(2, "PyYAML is required (pip install pyyaml)")


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def spec_routes(spec):
    paths = spec.get("paths") if isinstance(spec, dict) else None
    if not isinstance(paths, dict):
        fail(2, "spec has no 'paths' mapping")
    routes = set()
    for path, item in paths.items():
        if not isinstance(item, dict):
            fail(2, f"path item {path!r} is not a mapping")
        for key in item:
            if key.lower() in HTTP_METHODS:
                routes.add((key.upper(), path))
    return routes


def main():
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC
    try:
        with open(spec_path, encoding="utf-8") as f:
            spec = yaml.load(f, Loader=UniqueKeyLoader)
    except OSError as e:
        fail(2, f"cannot read {spec_path}: {e}")
    except yaml.YAMLError as e:
        fail(2, f"cannot parse {spec_path}: {e}")

    actual = spec_routes(spec)
    missing = sorted(EXPECTED_ROUTES - actual, key=lambda r: (r[1], r[0]))
    extra = sorted(actual - EXPECTED_ROUTES, key=lambda r: (r[1], r[0]))
    if missing or extra:
        lines = [f"{spec_path} does not match EXPECTED_ROUTES"]
        lines += [f"  missing from spec: {m} {p}" for m, p in missing]
        lines += [f"  not expected:      {m} {p}" for m, p in extra]
        fail(1, "\n".join(lines))
    print(f"check_openapi: OK, {len(actual)} routes match")


if __name__ == "__main__":
    main()
