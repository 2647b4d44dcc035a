"""The fenced code blocks of README.md and docs/, and how a test asks for one by its ID.

The convention (checked by tests/test_docs.py): every block of shell commands, that is a fence
whose info string is sh, bash, shell, console, shell-session or zsh, or any block with a line
starting `$ `, is preceded by one of

    <!-- tested: ID -->     a test runs it, having read its text with `block("ID")`
    <!-- illustrative -->   shown, not run (it needs your data, a Qdrant server, or hours)

Other blocks (YAML, JSON, output) may carry a `tested:` marker too, when a test reads them.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"sh", "bash", "shell", "console", "shell-session", "zsh"}
MARK = re.compile(r"^<!--\s*(illustrative|tested:\s*([\w.-]+))\s*-->$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, from 1
    info: str  # the fence's language, "" if none
    text: str
    mark: str | None  # "illustrative", "tested" or None
    id: str | None  # the ID of a tested block

    @property
    def shell(self) -> bool:
        return self.info in SHELL or any(x.startswith("$ ") for x in self.text.splitlines())

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        mark = MARK.match(before)
        body = [x[len(indent) :] if x.startswith(indent) else x for x in lines[i + 1 : end]]
        found.append(
            Block(
                path=path,
                line=i + 1,
                info=info,
                text="\n".join(body) + "\n",
                mark=None if mark is None else mark.group(1).split(":")[0],
                id=None if mark is None else mark.group(2),
            )
        )
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [b for p in markdown_files() for b in blocks(p)]


def block(id: str) -> str:
    """The text of the one block marked `<!-- tested: ID -->`."""
    matches = [b for b in all_blocks() if b.id == id]
    if len(matches) != 1:
        raise KeyError(f"{len(matches)} blocks marked `tested: {id}`")
    return matches[0].text


def commands(b: Block) -> list[str]:
    """The command lines of a shell block: in a console transcript the lines after `$ `; in a
    script every line that is not a comment, continuation lines joined."""
    out: list[str] = []
    pending = ""
    for raw in b.text.splitlines():
        if b.info == "console" or b.info == "shell-session" or b.info == "":
            if not raw.startswith("$ ") and not pending:
                continue
            raw = raw[2:] if raw.startswith("$ ") else raw
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def segments(command: str) -> list[list[str]]:
    """A command line cut into simple commands (at `&&`, `&`, `;`, `|`), comments and the
    `...` that stands for "meanwhile" dropped."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    parts: list[list[str]] = [[]]
    for tok in lex:
        if tok and set(tok) <= set(";&|"):
            parts.append([])
        elif tok != "...":
            parts[-1].append(tok)
    return [p for p in parts if p]


def hooks() -> ModuleType:
    """docs/hooks.py, the MkDocs hooks that generate pages at build time, as a module."""
    spec = importlib.util.spec_from_file_location(
        "crossfade_docs_hooks", ROOT / "docs" / "hooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
