"""The code blocks of the user guides (docs/*.md), as the guide tests run them.

A runnable block sits between `<!-- test:begin NAME -->` and `<!-- test:end -->`; a block
shown but not run is preceded by `<!-- test:skip REASON -->`. Every other bash/python
block in a guide is an error, so no example can silently go untested. `python` blocks run
with this interpreter; a guide's runnable blocks form one bash script, in order, in one
folder (later blocks use earlier outputs, as a reader would).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
NOT_GUIDES = {"OPERATIONS.md",     # the operator's manual: cluster-only commands
              "parity.md",        # reference tables (evidence per switch), nothing to run
              "ARCHITECTURE.md"}  # the code's map, nothing to run
RUN_LANGS = ("bash", "python")

_MARKED = re.compile(
    r"<!-- test:begin (?P<name>[\w.-]+) -->\s*```(?P<lang>\w+)\n(?P<code>.*?)```\s*<!-- test:end -->"
    r"|<!-- test:skip (?P<reason>[^>]*?) -->\s*```(?P<skip_lang>\w+)\n(?P<skip_code>.*?)```"
    r"|```(?P<bare_lang>\w*)\n(?P<bare_code>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    guide: str
    name: str | None          # None: shown, not run
    lang: str
    code: str
    skip_reason: str | None = None
    line: int = 0


def guides() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p.name not in NOT_GUIDES)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a guide, marked runnable, marked skipped, or bare."""
    text = path.read_text()
    found = []
    for match in _MARKED.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match["name"]:
            found.append(Block(path.name, match["name"], match["lang"], match["code"], line=line))
        elif match["reason"] is not None:
            found.append(Block(path.name, None, match["skip_lang"], match["skip_code"],
                               skip_reason=match["reason"].strip(), line=line))
        else:
            found.append(Block(path.name, None, match["bare_lang"], match["bare_code"], line=line))
    return found


def unmarked(path: Path) -> list[Block]:
    """bash/python blocks neither run nor skipped with a reason."""
    return [b for b in blocks(path) if b.name is None and b.skip_reason is None and b.lang in RUN_LANGS]


def runnable(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.name is not None]


def script(path: Path, python: str) -> str:
    """The guide's runnable blocks as one bash script; `@@ran NAME` after each block."""
    parts = ["set -euo pipefail"]
    for block in runnable(path):
        if block.lang == "python":
            parts.append(f"{python} - <<'FOLDRAY_GUIDE_PY'\n{block.code}FOLDRAY_GUIDE_PY")
        elif block.lang == "bash":
            parts.append(block.code)
        else:
            raise ValueError(f"{path.name}:{block.line}: block {block.name}: cannot run {block.lang!r}")
        parts.append(f"echo '@@ran {block.name}'")
    return "\n".join(parts) + "\n"
