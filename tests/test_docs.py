"""The user documentation points only at what the repository has.

README.md, docs/*.md and every Python source of flashseq/, constrint/, autotune/ and bench/
(docstrings and comments) are scanned for repository paths (``flashseq/...``, ``csrc/...``,
``bench/results/...``, Markdown links) that do not exist, and for the project's internal notes,
which users do not have.
"""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TOP_FOLDERS = ("flashseq", "constrint", "autotune", "bench", "csrc", "tests", "docs", "examples",
               ".ci")
# a path into one of the top folders: letters, digits, _ . - / (placeholders such as <gpu>,
# {a,b} or * mark a pattern, not a file, and are skipped)
PATH_RE = re.compile(r"(?<![\w./-])((?:%s)/[\w./<>{}*,-]*)" % "|".join(re.escape(f) for f in TOP_FOLDERS))
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
# made by the build, not kept in the repository: setup.py's build_py copies csrc/ there
GENERATED = {"flashseq/_csrc"}
INTERNAL_RE = re.compile(r"API\.md|DESIGN\.md|STYLE\.md|shared notes|\.\./shared|/work/shared")


def _documents() -> list[pathlib.Path]:
    docs = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
    sources = [p for folder in ("flashseq", "constrint", "autotune", "bench")
               for p in sorted((REPO / folder).rglob("*.py"))]
    return [p for p in docs + sources if p.is_file()]


def missing_paths(text: str) -> list[str]:
    """Repository paths named in ``text`` that do not exist (placeholders skipped)."""
    missing = []
    for match in PATH_RE.finditer(text):
        path = match.group(1).rstrip(".,:;")
        if any(ch in path for ch in "<>{}*,") or path.rstrip("/") in GENERATED:
            continue
        if not (REPO / path).exists():
            missing.append(path)
    return missing


def broken_links(text: str, where: pathlib.Path) -> list[str]:
    """Markdown link targets of ``text`` (relative to the file ``where``) that do not exist."""
    broken = []
    for target in LINK_RE.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (where.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    return broken


def test_the_scanners_catch_what_they_should():
    assert missing_paths("see csrc/fused/kernel.cu and bench/results/<gpu>/x.md") == ["csrc/fused/kernel.cu"]
    assert missing_paths("flashseq/kernels/fused_rnn/cpu.py, docs/api.md.") == []
    assert broken_links("[a](docs/nope.md) [b](https://x.org) [c](README.md#set-up)",
                        REPO / "README.md") == ["docs/nope.md"]
    assert INTERNAL_RE.search("formulas in API.md")


def test_docs_exist():
    for name in ("design.md", "api.md", "support.md"):
        assert (REPO / "docs" / name).is_file(), name
    for name in ("LICENSE", "CHANGELOG.md"):
        assert (REPO / name).is_file(), name


@pytest.mark.parametrize("path", _documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_points_only_at_files_the_repository_has(path):
    text = path.read_text(encoding="utf-8")
    assert not missing_paths(text), f"{path.relative_to(REPO)} names missing paths"
    if path.suffix == ".md":
        assert not broken_links(text, path), f"{path.relative_to(REPO)} has broken links"
    internal = INTERNAL_RE.findall(text)
    assert not internal, f"{path.relative_to(REPO)} refers to internal notes: {internal}"


def test_readme_points_at_the_docs():
    text = (REPO / "README.md").read_text()
    for name in ("docs/design.md", "docs/api.md", "docs/support.md", "examples/", "LICENSE",
                 "CHANGELOG.md"):
        assert name in text, name
