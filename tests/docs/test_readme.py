"""The README stays a first page (at most 150 lines), and every relative link in it, in
docs/ and in bench/ points at a file that exists (and, for `page.md#anchor`, a heading
of that page)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = ["docs/architecture.md", "docs/demo.md", "docs/cli.md", "docs/policy.md",
         "docs/registry.md", "docs/bases.md", "docs/training.md", "docs/controller.md",
         "docs/executors.md", "docs/serving.md", "docs/mlflow.md", "docs/operating.md",
         "docs/limits.md", "bench/README.md", "bench/results/label-free.md",
         "bench/results/training.md", "bench/results/scale-and-serving.md"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text("utf-8"), re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text("utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move text to docs/"


def test_readme_indexes_every_page() -> None:
    text = (ROOT / "README.md").read_text("utf-8")
    missing = [p for p in PAGES if f"]({p})" not in text]
    assert not missing, f"README.md's page index lacks {missing}"


def test_links_resolve() -> None:
    broken = []
    for page in [ROOT / "README.md", *(ROOT / p for p in PAGES)]:
        for target in links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
