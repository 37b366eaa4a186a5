"""The README is short and starts with what a newcomer can run; every link in it and in
docs/ resolves; every docs/ page is in the README's index."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def local_links(path: Path) -> list[str]:
    return [target for target, _anchor in LINK.findall(path.read_text()) if "://" not in target]


def test_readme_is_short_and_starts_with_tiny_mode():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150
    assert any("python app.py --tiny" in line for line in lines[:60])
    assert "](assets/app.png)" in README.read_text()


def test_every_local_link_resolves():
    broken = []
    for page in [README, *DOCS]:
        for target in local_links(page):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_docs_page_is_in_the_readme_index():
    linked = {(ROOT / target).resolve() for target in local_links(README)}
    missing = [page.name for page in DOCS if page.resolve() not in linked]
    assert not missing, f"add these docs/ pages to the README's Documentation table: {missing}"


def test_the_link_scan_finds_links():
    page = ROOT / "docs" / "cli.md"
    assert "lip-sync.md" in local_links(page)
    assert LINK.findall("[x](https://example.org/a) [y](b.md#c)") == [("https://example.org/a", ""), ("b.md", "#c")]
