"""Pull fenced code blocks, with the prose around them, out of the Markdown docs.

No markers are needed in the docs: a block is found by the headings above it,
its info string (```sh, ```python, ```json), the bold step label that opens its
lead paragraph (e.g. "**3. Register** a client") and, where that is not enough,
by what the code itself defines.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

# The address the docs use for the local server; the tests swap in their own.
DOC_ORIGIN = "http://127.0.0.1:8080"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
_STEP_LABEL = re.compile(r"^\*\*(?P<label>[^*]+)\*\*", re.M)


@dataclass
class Block:
    doc: str  # file name, e.g. "api.md"
    line: int  # 1-based line of the opening fence
    info: str  # first word of the info string ("" if none)
    code: str
    headings: tuple  # enclosing headings, outermost first
    lead: str  # prose between the previous block/heading and this block
    trail: str = ""  # prose between this block and the next block/heading
    _open: bool = field(default=True, repr=False)  # still collecting its trail

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"

    def line_of(self, index: int) -> str:
        """docs/<file>:<line> of the block's code line `index` (0-based)."""
        return f"docs/{self.doc}:{self.line + 1 + index}"

    @property
    def step_label(self) -> str | None:
        """The last line-initial bold phrase of the lead, e.g. '3. Register'."""
        labels = _STEP_LABEL.findall(self.lead)
        return labels[-1].strip() if labels else None

    @property
    def step_key(self) -> str | None:
        label = self.step_label
        if label is None:
            return None
        m = re.match(r"(\d+)\.", label)
        return m.group(1) if m else label.lower()

    def under(self, pattern: str) -> bool:
        """True if one of the enclosing headings matches the regex (case-insensitive)."""
        return any(re.search(pattern, h, re.I) for h in self.headings)


def blocks(doc: str) -> list[Block]:
    path = DOCS / doc
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    headings: list[tuple[int, str]] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if m:
            fence = m.group("fence")
            info = (m.group("info").strip().split() or [""])[0]
            start = i
            body = []
            i += 1
            while i < len(lines):
                close = lines[i].strip()
                if close.startswith(fence[0] * len(fence)) and set(close) == {fence[0]}:
                    break
                body.append(lines[i])
                i += 1
            if out:
                _close_trail(out, prose)
            out.append(Block(doc, start + 1, info, "\n".join(body) + "\n",
                             tuple(h for _, h in headings), "\n".join(prose).strip()))
            prose = []
            i += 1
            continue
        h = _HEADING.match(line)
        if h:
            if out:
                _close_trail(out, prose)
            level = len(h.group("hashes"))
            headings = [(lv, t) for lv, t in headings if lv < level] + [(level, h.group("text"))]
            prose = []
        else:
            prose.append(line)
        i += 1
    if out:
        _close_trail(out, prose)
    return out


def _close_trail(out: list[Block], prose: list[str]) -> None:
    last = out[-1]
    if last._open:
        last.trail = "\n".join(prose).strip()
        last._open = False


def curl_commands(code: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """Split a shell block into its curl commands.

    Returns (command text, [(line index in the block, comment text)]) for each
    line that starts a curl invocation (`curl ...`, `X=$(curl ...`), with its
    backslash continuations. Heredoc bodies are skipped. The `# ...` lines that
    follow a command are what the docs say it prints.
    """
    lines = code.splitlines()
    result: list[tuple[str, list[tuple[int, str]]]] = []
    heredoc_end = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            i += 1
            continue
        hd = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if hd:
            heredoc_end = hd.group(1)
        if re.search(r"(^|\$\(|[|;&]\s*)\s*curl\s", line):
            cmd = [line]
            while cmd[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            result.append(("\n".join(cmd), []))
        elif line.lstrip().startswith("#") and result:
            result[-1][1].append((i, line.lstrip()[1:].strip()))
        i += 1
    return result


ANY = "<doc:any>"
MORE = "<doc:more>"


def doc_json_pattern(text: str):
    """Parse a JSON-ish line from the docs, where "…" stands for any value
    and a trailing `, …` inside an object for "more members"."""
    t = text.replace('"…"', f'"{ANY}"')
    t = re.sub(r",\s*…\s*}", f', "{MORE}": true}}', t)
    t = re.sub(r",\s*…\s*]", f', "{MORE}"]', t)  # "[a, …]": more items may follow
    return json.loads(t)


def pattern_mismatches(expected, actual, path="$") -> list[str]:
    """Compare a doc pattern with a real value; list the differences."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems = []
        open_ended = MORE in expected
        for k, v in expected.items():
            if k == MORE:
                continue
            if k not in actual:
                problems.append(f"{path}.{k}: missing")
            else:
                problems += pattern_mismatches(v, actual[k], f"{path}.{k}")
        if not open_ended:
            extra = sorted(set(actual) - set(expected))
            if extra:
                problems.append(f"{path}: unexpected members {extra}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected an array, got {actual!r}"]
        open_ended = bool(expected) and expected[-1] == MORE
        if open_ended:
            expected = expected[:-1]
        if len(actual) < len(expected) or (not open_ended and len(actual) != len(expected)):
            return [f"{path}: expected {len(expected)} item(s), got {len(actual)}: {actual!r}"]
        problems = []
        for n, (e, a) in enumerate(zip(expected, actual)):
            problems += pattern_mismatches(e, a, f"{path}[{n}]")
        return problems
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []
