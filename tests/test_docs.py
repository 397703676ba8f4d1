"""The README and docs/ stay true: links resolve, `make` targets exist, citations point at files a
reader has (never the development notes' SPEC sections), and the README stays a short newcomer's path."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROFILES = sorted((ROOT / "artifact" / "nasaudit" / "profiles").glob("*.toml"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
SEP = {"&&", "||", ";", "|"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [target for target in LINK.findall(text) if "://" not in target]


@pytest.mark.parametrize("path", PAGES + PROFILES, ids=lambda p: p.name)
def test_no_citation_of_the_unshipped_spec(path) -> None:
    text = path.read_text()
    assert "SPEC §" not in text and "SPEC.md" not in text, f"{path.name} cites SPEC, which is not shipped"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page) -> None:
    for target in links(page):
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        assert resolved.exists(), f"{page.name}: link to missing {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading for #{anchor} in {resolved.name}"


def test_readme_links_every_docs_page_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = {Path(target.partition("#")[0]).name for target in links(ROOT / "README.md")}
    assert {page.name for page in PAGES[1:]} <= linked
    assert len(readme.splitlines()) <= 250


def make_commands(page: Path) -> set[tuple[str, ...]]:
    """The arguments of every `make` call in the page's bash blocks (continuations joined)."""
    commands = set()
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "make" and (i == 0 or words[i - 1] in SEP):
                    end = next((j for j in range(i + 1, len(words)) if words[j] in SEP), len(words))
                    commands.add(tuple(words[i + 1 : end]))
    return commands


def test_every_make_command_the_pages_show_is_valid() -> None:
    """Each `make ...` in a page's bash block, with its variables, is one `make -n` can plan."""
    shown = set().union(*(make_commands(page) for page in PAGES))
    targets = {w for command in shown for w in command if "=" not in w and not w.startswith("-")}
    assert {"smoke-test", "test", "gpu-check", "table1", "report", "docker-build"} <= targets
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    for command in sorted(shown):
        done = subprocess.run(["make", "-n", *command], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"make {' '.join(command)}: {done.stderr.strip()}"


def test_layout_names_only_paths_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("```")[1]
    package = ROOT / "artifact" / "nasaudit"
    for line in layout.splitlines():
        if not line.strip() or line.startswith("   "):  # blank, or a description's continuation
            continue
        base = package if line.startswith("  ") else ROOT
        for name in re.split(r"\s{2,}", line.strip())[0].split(", "):
            assert (base / name).exists() or name in {"data/", "results/"}, f"Layout names a missing {name}"
    for module in re.findall(r"\b(\w+\.py)\b", layout):
        assert list(ROOT.glob(f"artifact/nasaudit/**/{module}")), module
