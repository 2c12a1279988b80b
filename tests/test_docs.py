"""The documentation: the README is a short front door, the site under docs/ builds strictly and
offline (mkdocs.yml), every option of ``blendedit edit`` is documented on some page, and every
relative link in the README and in docs/ points to a file that exists."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 200

# Markdown links and images: [text](target) / ![alt](target "title"); HTML src= and href= too.
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_FENCE = re.compile(r"^\s*(```|~~~)")


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(lines)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's links and images that are relative paths (no URL scheme, no
    pure #anchor), without their #anchor or ?query."""
    prose = _prose(page.read_text(encoding="utf-8"))
    out = []
    for target in _MD_LINK.findall(prose) + _HTML_LINK.findall(prose):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue  # https:, mailto:, an anchor on the same page
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if path:
            out.append(path)
    return out


def edit_flags() -> list[str]:
    """Every long option of ``blendedit edit``, read from the CLI's own parser at test time (so a
    new flag is checked too); --help excluded."""
    from blendedit.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subparsers, "blendedit's parser has no subcommands"
    edit = subparsers[0].choices["edit"]
    flags = {
        flag
        for action in edit._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }
    assert len(flags) > 20, f"suspiciously few edit flags found: {sorted(flags)}"
    return sorted(flags)


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < README_MAX_LINES, (
        f"README.md has {n} lines; keep it a front door under {README_MAX_LINES} lines and move "
        "details to a page under docs/"
    )


def test_readme_keeps_the_test_command():
    # CI runs the README's test command; .ci/run repeats it verbatim.
    command = (
        'pip install -e ".[test]" && ruff check . && ruff format --check . && python -m pytest'
    )
    assert command in README.read_text(encoding="utf-8")
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "page", [README, *doc_pages()], ids=lambda p: str(p.relative_to(ROOT)).replace(os.sep, "/")
)
def test_relative_links_resolve(page: Path):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files: {missing}"


def test_every_edit_flag_is_documented():
    text = "\n".join(p.read_text(encoding="utf-8") for p in doc_pages())
    undocumented = [
        flag
        for flag in edit_flags()
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
    ]
    assert not undocumented, (
        f"options of `blendedit edit` documented on no page under docs/: {undocumented}; "
        "add them to the options table of the page of their task"
    )


def test_site_builds_strictly(tmp_path: Path):
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    # No -q: it lowers mkdocs' log level so far that strict mode counts no warnings at all.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n{output}"
    assert (tmp_path / "site" / "index.html").exists()
