"""MkDocs hook (mkdocs.yml `hooks:`): the site's front page is the repository's README.

docs/index.md is what the forge shows for the docs/ folder (a map of the manual); on the site the
front page shows README.md instead, with its links into docs/ made relative to the site root, so
that the front page has one source.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def site_readme(text: str) -> str:
    """README.md as a page of the site: `](docs/x.md)` becomes `](x.md)`."""
    return re.sub(r"\]\(docs/", "](", text)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs API)
    if page.file.src_uri == "index.md":
        return site_readme(README.read_text(encoding="utf-8"))
    return markdown
