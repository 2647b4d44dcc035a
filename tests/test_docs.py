"""The README and docs/ as a reader meets them: every shell block either run by a test or
marked illustrative (tests/docblocks.py has the convention), every command they show one that
exists, the quick start run as written, and the README short and honest about what was tested."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.cli import build_parser
from proxy.config import load_settings, reference_markdown
from tests.docblocks import ROOT, all_blocks, block, commands, markdown_files, segments
from tests.helpers import free_port, wait_for

README = ROOT / "README.md"


def test_every_shell_block_is_tested_or_illustrative() -> None:
    unmarked = [b.where for b in all_blocks() if b.shell and b.mark is None]
    assert not unmarked, (
        "precede each with <!-- illustrative --> or <!-- tested: ID --> (and a test that runs "
        f"reads it with block(<ID>)): {unmarked}"
    )


def test_every_tested_block_is_read_by_a_test() -> None:
    """A `tested: ID` marker is a claim; the test that makes it true names the ID."""
    ids = [b.id for b in all_blocks() if b.id]
    assert len(ids) == len(set(ids)), f"an ID marks two blocks: {sorted(ids)}"
    source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    read = set(re.findall(r"""\bblock\(\s*["']([\w.-]+)["']\s*\)""", source))
    assert set(ids) <= read, f"marked tested, read by no test: {sorted(set(ids) - read)}"
    assert read <= set(ids), f"read by a test, marking no block: {sorted(read - set(ids))}"


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, flags=re.M))


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and a.dest == "command")
    return set(sub.choices)


def test_commands_in_the_docs_exist() -> None:
    """Illustrative or not, a block shows commands a reader can type: a `crossfade` line parses
    with the real CLI (a transcript's lines name a real subcommand: some show a refusal), a
    `make` target is in the Makefile, a script or test file is there."""
    targets, subcommands, problems = _makefile_targets(), _subcommands(), []
    checked = 0
    for b in all_blocks():
        if not b.shell:
            continue
        for line in commands(b):
            for seg in segments(line):
                name, args = Path(seg[0]).name, seg[1:]
                checked += 1
                if name == "crossfade":
                    if b.info in ("sh", "bash", "shell", "zsh"):
                        err = io.StringIO()
                        try:
                            with contextlib.redirect_stderr(err):
                                build_parser().parse_args(args)
                        except SystemExit:
                            problems.append(f"{b.where}: {line!r}: {err.getvalue().strip()}")
                    else:
                        words = [a for a in args if not a.startswith("-")]
                        config = args[args.index("--config") + 1] if "--config" in args else None
                        words = [w for w in words if w != config]
                        if not words or words[0] not in subcommands:
                            problems.append(f"{b.where}: {line!r}: no such subcommand")
                elif name == "make":
                    for t in args:
                        if not t.startswith("-") and "=" not in t and t not in targets:
                            problems.append(f"{b.where}: {line!r}: no make target {t}")
                elif re.fullmatch(r"python(3(\.\d+)?)?", name):
                    files = [a for a in args if a.endswith(".py")]
                    for f in files:
                        if not (ROOT / f).is_file():
                            problems.append(f"{b.where}: {line!r}: no file {f}")
    assert checked > 50, checked
    assert not problems, "\n".join(problems)


def test_the_readme_is_short_and_says_what_was_not_tested() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    # The ground rule: what ran against a real Qdrant server and what did not, said up front.
    assert "not tested against a real Qdrant server" in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which is not there"
            assert target.startswith("docs/"), f"{target}: the site's home page is the README"


def test_every_page_is_in_the_nav_and_the_build_stays_offline() -> None:
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert cfg["strict"] is True and cfg["theme"]["name"] == "material"
    assert cfg["theme"]["font"] is False  # no web fonts fetched
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in cfg.get("plugins", [])]
    assert not {"social", "privacy", "offline"} & set(plugins), plugins

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        if isinstance(nav, list):
            return [p for v in nav for p in pages(v)]
        return []

    listed = set(pages(cfg["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in markdown_files() if p != README}
    assert listed == on_disk, (sorted(on_disk - listed), sorted(listed - on_disk))
    assert "security.md" in listed


# -- the blocks that tests run ---------------------------------------------------------------


def test_config_reference_command() -> None:
    """docs/reference/config.md's command prints the table the docs build puts on that page."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", "-c", block("config-reference")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out == reference_markdown() + "\n"


def test_readme_config_is_valid(tmp_path: Path) -> None:
    """The README's config for adopting a collection loads (models are not loaded here)."""
    path = tmp_path / "my.yaml"
    path.write_text(block("readme-config"))
    s = load_settings(path)
    assert s.indexes.old.adopt is not None and s.indexes.old.adopt.text_field == "page_content"
    assert s.indexes.new.collection == "docs_mpnet"
    # The steps below it name the same collection.
    assert "migrate start --into docs_mpnet" in README.read_text()


def test_readme_chroma_config_is_the_seeds_migration(tmp_path: Path) -> None:
    """The README's Chroma config loads, and is the migration tests/test_chroma_seeds.py runs
    against a real Chroma server (an adopted collection, L6 -> mpnet, --into a collection)."""
    path = tmp_path / "chroma.yaml"
    path.write_text(block("readme-chroma-config"))
    s = load_settings(path)
    old = s.indexes.old
    assert old.backend == "chroma" and old.adopt is not None and old.collection == "docs"
    assert (s.models.old.name, s.models.new.name) == ("all-MiniLM-L6-v2", "all-mpnet-base-v2")
    assert "migrate start --into docs_mpnet" in README.read_text()


def test_readme_quick_start(tmp_path: Path) -> None:
    """The README's quick start as written: `make run` (its data dir and port moved out of the
    way through the environment), then the search request beside it, on that port. The other
    line, `make test`, is what CI runs (.ci/run); the suite cannot run itself."""
    quick = block("quick-start")
    lines = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert lines == ["make run", "make test"], lines
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "make test", ci[-1]
    installed = subprocess.run(["make", "-q", "install"], cwd=ROOT, capture_output=True)
    if installed.returncode != 0:
        why = "`make install` is not current (the quick start would install first)"
        if os.environ.get("CI"):  # under `make test` it is: CI runs the quick start
            pytest.fail(why)
        pytest.skip(why)

    port = free_port()
    env = {
        **os.environ,
        "CROSSFADE_DATA_DIR": str(tmp_path / "demo"),
        "CROSSFADE_SERVER__PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", "make run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make, the shell and crossfade stop together
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 300, "make run to serve")
        start = f"crossfade: serving mode=fused, no split, generation 0 on http://127.0.0.1:{port}"
        assert start in log.read_text()
        search = block("quick-start-search")
        assert "localhost:8000" in search
        answer = subprocess.run(
            ["bash", "-c", search.replace("localhost:8000", f"localhost:{port}")],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    body = json.loads(answer)
    assert body["mode"] == "fused" and len(body["results"]) == 3, body
    for hit in body["results"]:
        assert set(hit["ranks"]) == {"old", "new", "bm25"} and isinstance(hit["migrated"], bool)
