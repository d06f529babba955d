"""The README and docs/ cannot rot silently: every relative link and #anchor resolves, and every
command they show in code (`python -m bench.X`, `python -m train`, `sana-serve SUB`) exists."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.S | re.M)  # also fenced blocks inside list items
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]+`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
MODULE_COMMAND = re.compile(r"python -m (bench\.\w+|train)\b")
CLI_COMMAND = re.compile(r"\bsana-serve ([a-z][a-z-]*)")


def _prose(text: str) -> str:
    """The text without code: links inside code are examples, not links."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def _code(text: str) -> list[str]:
    return FENCED.findall(text) + INLINE_CODE.findall(FENCED.sub("", text))


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: markup dropped, lower case, punctuation removed (hyphens and
    underscores kept), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCED.sub("", page.read_text(encoding="utf-8"))):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")  # GitHub numbers repeated headings
    return result


def links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s):, mailto: are not ours to check
                found.append((page.relative_to(ROOT).as_posix(), target))
    return found


def commands() -> list[str]:
    found = set()
    for page in PAGES:
        for code in _code(page.read_text(encoding="utf-8")):
            found |= {f"python -m {module}" for module in MODULE_COMMAND.findall(code)}
            found |= {f"sana-serve {sub}" for sub in CLI_COMMAND.findall(code)}
    return sorted(found)


def test_the_anchor_rule_matches_githubs():
    assert github_anchor("Sprint, SANA-1.5, LoRA") == "sprint-sana-15-lora"
    assert github_anchor("The shapes model (the embedded default)") == "the-shapes-model-the-embedded-default"
    assert github_anchor("Under load: admission, deadlines, drain") == "under-load-admission-deadlines-drain"
    assert github_anchor("`serve/api/` and the page") == "serveapi-and-the-page"


def test_the_pages_have_links_and_commands_to_check():
    # Guards the checks below against a pattern that silently matches nothing.
    assert len(links()) >= 10 and any("#" in target for _, target in links())
    assert {"sana-serve run", "sana-serve generate", "python -m train"} <= set(commands())
    assert any(command.startswith("python -m bench.") for command in commands())


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "sana-serve run" in text and "lint-imports && python -m pytest -q" in text


@pytest.mark.parametrize(("page", "target"), links())
def test_relative_links_and_anchors_resolve(page, target):
    source = ROOT / page
    path, _, anchor = target.partition("#")
    resolved = (source.parent / path).resolve() if path else source
    assert resolved.exists(), f"{page}: {target} points at a missing file"
    if anchor:
        assert resolved.suffix == ".md", f"{page}: {target} has an anchor into a file that is not Markdown"
        assert anchor in anchors(resolved), f"{page}: #{anchor} is not a heading of {resolved.relative_to(ROOT)}"


def _help(command: str) -> tuple[str, int, str]:
    program, _, rest = command.partition(" ")
    if program == "python":
        argv = [sys.executable, *rest.split(), "--help"]
    else:  # the console script `pip install` made, beside this interpreter
        script = Path(sys.executable).with_name("sana-serve")
        argv = [str(script), rest, "--help"] if script.exists() else [sys.executable, "-m", "serve.cli", rest, "--help"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    return command, done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_every_command_shown_exists():
    # Each `--help` imports torch and friends: two at a time, one per core.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_help, commands()))
    failed = [f"{command} (exit {code}): {output[-300:]}" for command, code, output in results if code != 0]
    assert not failed, "\n".join(failed)
    assert all("usage:" in output for _, _, output in results)
