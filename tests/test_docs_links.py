"""The README and docs/ pages: every relative link and image resolves, anchors included.

For README.md and every docs/*.md, each Markdown link or image target that is not an
http(s) or mailto URL must name a file or folder that exists (relative to the Markdown
file's folder), and a ``#anchor`` must match a heading of the target Markdown file (of the
same file for a bare ``#anchor``) under GitHub's slug rule. Links inside fenced code blocks
and inline code are not links. The README stays a newcomer's page: at most 250 lines, and it
links every docs page. Standard library only, no network.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# [text](target) and ![alt](target), with an optional <...> around the target and a title
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
# [label]: target (reference definitions)
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SKIP_SCHEMES = re.compile(r"^(?:https?|mailto):", re.IGNORECASE)


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks; fence lines dropped."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            lines.append((number, line))
        elif (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not line.strip()[len(match.group(1)) :].strip()
        ):
            fence = None
    return lines


def strip_code_spans(paragraph: str) -> str:
    """The paragraph with inline code spans blanked (newlines kept, so line numbers hold)."""
    return _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), paragraph)


def paragraphs(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Consecutive non-blank lines joined: (first line number, text). Code spans may span
    lines within a paragraph, never across one."""
    blocks: list[tuple[int, str]] = []
    current: list[tuple[int, str]] = []
    previous = None
    for number, line in lines + [(-1, "")]:
        contiguous = previous is not None and number == previous + 1
        if not line.strip() or (current and not contiguous):
            if current:
                blocks.append((current[0][0], "\n".join(text for _, text in current)))
            current = [] if not line.strip() else [(number, line)]
        else:
            current.append((number, line))
        previous = number
    return blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lowercase; drop every character that is not a
    letter, digit, space, hyphen or underscore; spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a Markdown file (duplicates get -1, -2...),
    plus explicit HTML anchors."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    lines = outside_fences(path.read_text(encoding="utf-8"))
    headings: list[str] = []
    for index, (number, line) in enumerate(lines):
        atx = _ATX.match(line)
        if atx:
            headings.append(atx.group(2) or "")
            continue
        if _SETEXT.match(line) and index > 0:
            prev_number, prev = lines[index - 1]
            if (
                prev_number == number - 1
                and prev.strip()
                and not prev.lstrip().startswith(("|", "-", "*", "+", ">"))
                and not _ATX.match(prev)
            ):
                headings.append(prev.strip())
        result.update(_HTML_ANCHOR.findall(line))
    for heading in headings:
        slug = github_slug(heading.replace("`", ""))  # GitHub keeps a code span's text
        count = seen.get(slug, 0)
        result.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    found: list[tuple[int, str]] = []
    for first, paragraph in paragraphs(outside_fences(path.read_text(encoding="utf-8"))):
        text = strip_code_spans(paragraph)
        for offset, line in enumerate(text.split("\n")):
            ref = _REF_DEF.match(line)
            if ref:
                found.append((first + offset, ref.group(1)))
        for match in _INLINE_LINK.finditer(text):
            line_number = first + text.count("\n", 0, match.start())
            found.append((line_number, match.group(1)))
    return [(n, t[1:-1] if t.startswith("<") and t.endswith(">") else t) for n, t in found]


def resolve(source: Path, target: str) -> tuple[Path, str]:
    """The file a link names (relative to its Markdown file, or to the repository root for a
    leading /) and its anchor ('' when none)."""
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    if not path_part:
        file = source
    elif path_part.startswith("/"):
        file = ROOT / path_part.lstrip("/")
    else:
        file = source.parent / path_part
    return file, unquote(anchor)


def broken_links(path: Path) -> list[str]:
    """One line per link of ``path`` that does not resolve."""
    problems: list[str] = []
    for number, target in links(path):
        if _SKIP_SCHEMES.match(target):
            continue
        file, anchor = resolve(path, target)
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{number}"
        if not file.exists():
            problems.append(f"{where}: {target}: no such file {file}")
            continue
        if anchor and file.is_file() and file.suffix.lower() in {".md", ".markdown"}:
            if anchor not in anchors(file):
                problems.append(f"{where}: {target}: no heading with anchor #{anchor} in {file.name}")
    return problems


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_docs_pages_exist():
    assert README.is_file()
    assert sorted(DOCS.glob("*.md")), "docs/ holds no Markdown pages"


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_links_every_docs_page():
    linked = {resolve(README, target)[0].resolve() for _, target in links(README) if not _SKIP_SCHEMES.match(target)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs pages: {missing}"


def test_github_slug_rule():
    assert github_slug("Reproducibility") == "reproducibility"
    assert (
        github_slug("Does it see COVID-19 or the source? The confounder audit")
        == "does-it-see-covid-19-or-the-source-the-confounder-audit"
    )
    assert (
        github_slug("Data size: what dvc repro costs as the data grows")
        == "data-size-what-dvc-repro-costs-as-the-data-grows"
    )
    assert (
        github_slug("Offline backbones (deepcovid compare --from-dvc-exps)")
        == "offline-backbones-deepcovid-compare---from-dvc-exps"
    )
    assert github_slug("Comparing architectures (the paper's Table 6)") == "comparing-architectures-the-papers-table-6"
    assert github_slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"


def test_the_checker_finds_broken_links(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Title\n\n## Part\n\n## Part\n", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Section `code` here\n\n"
        "[ok](other.md) [ok](other.md#part) [ok](other.md#part-1) [ok](#section-code-here)\n"
        "![ok](img.png) [ok](https://example.org/missing) [ok](mailto:a@b.c)\n"
        "`[not a link](nowhere.md)` and ``[nor](this.md)``\n\n"
        "```\n[not a link](fenced.md)\n```\n\n"
        "[bad file](missing.md) [bad anchor](other.md#part-2) [bad own](#nope)\n"
        "![bad image](missing.png)\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 4, problems
    for bad in ("missing.md", "other.md#part-2", "#nope", "missing.png"):
        assert any(f": {bad}:" in p for p in problems), (bad, problems)
