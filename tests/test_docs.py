"""The README and docs/ stay what a newcomer can follow: short, with every relative link alive.

Markdown is read with a few regular expressions rather than a parser: the links here are the
inline kind (`[text](target)`, `![alt](target)`), and code (fenced blocks, inline spans) is
skipped, since a command's brackets are not links.
"""

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 300
# What the pinned requirements need: Spaces default to an older Python where they have no release.
PYTHON_FLOOR = (3, 11)

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}: {self.target}"


def documentation_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str, blank_inline_code: bool = True) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code, with inline code spans blanked out unless asked not to."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, _INLINE_CODE.sub("", line) if blank_inline_code else line))
    return lines


def links_in(page: Path) -> list[Link]:
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for pattern in (_LINK, _HTML_SOURCE):
            found += [Link(page, number, match.group(1)) for match in pattern.finditer(line)]
    return found


def relative_links(page: Path) -> list[Link]:
    return [link for link in links_in(page) if not _EXTERNAL.match(link.target)]


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    anchors, seen = set(), {}
    for _, line in prose_lines(page.read_text(encoding="utf-8"), blank_inline_code=False):
        heading = _HEADING.match(line)
        if heading:
            anchor = heading_anchor(heading.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def broken(link: Link) -> str | None:
    """Why a relative link leads nowhere, or None when it is alive."""
    path_part, _, anchor = link.target.partition("#")
    target = (link.source.parent / path_part).resolve() if path_part else link.source
    if not target.exists():
        return "no such file"
    if ROOT not in target.parents and target != ROOT:
        return "outside the repository"
    if anchor and target.suffix == ".md" and anchor not in anchors_of(target):
        return f"no heading #{anchor} in {target.relative_to(ROOT)}"
    return None


def front_matter(page: Path) -> dict[str, str]:
    """The YAML front matter's top-level `key: value` lines (what a Space reads)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    fields = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return fields
        key, colon, value = line.partition(":")
        if colon and not key.startswith((" ", "\t", "#")):
            fields[key.strip()] = value.strip().strip("\"'")
    return {}  # never closed: not front matter


def test_the_readme_is_short_enough_to_read_in_five_minutes():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; move depth into docs/ (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    dead = [f"{link} ({reason})" for link in relative_links(page) if (reason := broken(link))]
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {
        (README.parent / link.target.partition("#")[0]).resolve()
        for link in relative_links(README)
    }
    orphans = [page.name for page in documentation_pages()[1:] if page.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_the_front_matter_names_the_python_the_pins_need():
    fields = front_matter(README)
    assert fields.get("sdk") == "gradio", "README.md's front matter (the Space's configuration) is missing"
    assert "python_version" in fields, "the front matter must name python_version, or a Space uses Python 3.10"
    version = tuple(int(part) for part in fields["python_version"].split(".")[:2])
    assert version >= PYTHON_FLOOR, f"python_version {fields['python_version']} is older than {PYTHON_FLOOR}"


# The checks themselves, on pages written here, so a checker that passes everything is caught.

def test_the_checks_see_dead_links_missing_headings_and_skip_code(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text(
        "# A page\n\n```bash\n# not a heading\n```\n\n## Its `--store` flag: αQE\n", encoding="utf-8"
    )
    page = tmp_path / "README.md"
    page.write_text(
        "[alive](docs/there.md#its---store-flag-αqe) [gone](docs/missing.md) [bad](docs/there.md#nowhere)\n"
        "![picture](docs/absent.jpg) [web](https://example.org/x.md) `[code](docs/nothing.md)`\n"
        "```\n[fenced](docs/nothing.md)\n```\n",
        encoding="utf-8",
    )
    reasons = {link.target: broken(link) for link in relative_links(page)}
    assert reasons == {
        "docs/there.md#its---store-flag-αqe": None,
        "docs/missing.md": "no such file",
        "docs/there.md#nowhere": "no heading #nowhere in docs/there.md",
        "docs/absent.jpg": "no such file",
    }
    assert anchors_of(tmp_path / "docs" / "there.md") == {"a-page", "its---store-flag-αqe"}


def test_front_matter_without_a_closing_line_is_not_front_matter(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("---\nsdk: gradio\npython_version: \"3.11\"\n---\n# Title\n", encoding="utf-8")
    assert front_matter(page) == {"sdk": "gradio", "python_version": "3.11"}
    page.write_text("---\nsdk: gradio\n# Title\n", encoding="utf-8")
    assert front_matter(page) == {}
