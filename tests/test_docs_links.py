"""Every link and every cited path in the docs, experiments, scripts and sources exists in a clone.

Two kinds of reference are checked, in README.md, docs/, experiments/, scripts/, benchmarks/ and
src/ (Markdown, YAML, Python and shell files, docstrings and comments included):

* relative Markdown links and images, ``[text](path#anchor)``: the file (and, for a Markdown
  target, the heading the anchor names) must exist;
* cited paths, such as ``docs/model.md``, ``experiments/baseline.yaml``, ``scripts/plot_runs.py``,
  ``update/numba.py`` (package-relative) or anything starting with ``../``: the path must
  exist inside the repository. A path outside it (``../shared/...``) is not in a clone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "rpusim"
SCANNED_DIRS = ("docs", "experiments", "scripts", "benchmarks", "src")
SUFFIXES = {".md", ".yaml", ".yml", ".py", ".sh"}

MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A path token: segments of word characters, dots and dashes joined by slashes.
PATH = re.compile(
    r"(?<![\w./$<>{}-])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*|[\w.-]+(?:/[\w.-]+)+|[\w.-]+\.md\b)"
)


def _repo_files() -> list[str]:
    """The repository's tracked and untracked-but-not-ignored files (what a commit would hold)."""
    return subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def _files() -> list[Path]:
    """The files that are scanned."""
    files = [ROOT / "README.md"]
    for name in _repo_files():
        path = ROOT / name
        if name.split("/")[0] in SCANNED_DIRS and path.suffix in SUFFIXES and path.is_file():
            files.append(path)
    return files


def _roots() -> dict[str, list[Path]]:
    """First path components that make a token a cited repository path, and where to look."""
    roots = {name.split("/")[0]: [ROOT] for name in _repo_files() if "/" in name}
    for sub in PACKAGE.iterdir():
        if sub.is_dir() and not sub.name.startswith("_"):
            roots.setdefault(sub.name, []).append(PACKAGE)  # update/numba.py
    roots["rpusim"] = [ROOT / "src"]  # rpusim/rng.py
    roots["shared"] = [ROOT]  # the development machines' folder beside the repo: never in a clone
    return roots


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return path.exists()


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = md.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


def broken_links(path: Path, text: str) -> list[str]:
    """The relative Markdown links of ``text`` (the file ``path``) that point nowhere."""
    bad = []
    for target in MD_LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # https:, mailto:, an anchor in the same page
        file, _, anchor = target.partition("#")
        dest = path.parent / file
        if not _inside(dest):
            bad.append(f"link {target}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"link {target} (no such heading)")
    return bad


def broken_paths(path: Path, text: str, roots: dict[str, list[Path]]) -> list[str]:
    """The repository paths cited in ``text`` (the file ``path``) that do not exist in it."""
    bad = []
    md_names = {Path(name).name for name in _repo_files() if name.endswith(".md")}
    for match in PATH.finditer(text):
        if text[match.end() : match.end() + 1] in ("{", "*", "<"):
            continue  # a pattern (experiments/lstm2-64wp-{fp,rpu}.yaml), not a path
        token = match.group(1).rstrip(".")
        if token.startswith("../"):
            if not (_inside(path.parent / token) or _inside(ROOT / token)):
                bad.append(token)
            continue
        if "/" not in token:
            # A bare Markdown name (`paper.md`) must be a page of the repository.
            if token.endswith(".md") and token not in md_names:
                bad.append(token)
            continue
        first = token.split("/")[0]
        if first not in roots:
            continue
        if not any((base / token).exists() for base in roots[first]):
            bad.append(token)
    return bad


def _cases():
    return [pytest.param(p, id=str(p.relative_to(ROOT))) for p in _files()]


@pytest.mark.parametrize("path", _cases())
def test_links_and_cited_paths_exist(path):
    text = path.read_text(encoding="utf-8")
    bad = broken_paths(path, text, _roots())
    if path.suffix == ".md":
        bad += broken_links(path, text)
    assert not bad, f"{path.relative_to(ROOT)} points to what a clone does not have: {bad}"


def test_the_checker_catches_what_it_should():
    roots = _roots()
    fake = ROOT / "docs" / "x.md"
    text = (
        "see `docs/rpu-model.md`, paper.md, ../shared/docs/paper.md, "
        "[a](../experiments/nope.yaml), "
        "[b](performance.md#no-such-heading), scripts/x.py and update/numba_nope.py; "
        "but docs/model.md, update/numba.py, rpusim/rng.py, [c](model.md), "
        "[d](performance.md#gpu), report.md, https://example.org/a/b.md, runs/x/report.md and "
        "experiments/lstm2-64wp-{fp,rpu}.yaml are fine"
    )
    assert broken_paths(fake, text, roots) == [
        "docs/rpu-model.md",
        "paper.md",
        "../shared/docs/paper.md",
        "../experiments/nope.yaml",
        "scripts/x.py",
        "update/numba_nope.py",
    ]
    assert broken_links(fake, text) == [
        "link ../experiments/nope.yaml",
        "link performance.md#no-such-heading (no such heading)",
    ]
