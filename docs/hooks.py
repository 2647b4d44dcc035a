"""MkDocs hooks (mkdocs.yml `hooks:`): the pages that are generated when the site is built.

- `<!-- config-reference -->` (docs/reference/config.md) becomes the config reference table,
  generated from the config models by `proxy.config.reference_markdown()`: no copy of it is
  committed, so a setting added to the code is documented by the next build.
- `<!-- readme -->` (docs/index.md) becomes README.md, its links into docs/ made relative to
  the site, so the home page and the README are one text.

Nothing here reaches the network.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's proxy/, whatever is installed
    sys.path.insert(0, str(ROOT))

CONFIG_REFERENCE = "<!-- config-reference -->"
README = "<!-- readme -->"


def config_reference(markdown: str) -> str:
    from proxy.config import reference_markdown

    return markdown.replace(CONFIG_REFERENCE, reference_markdown())


def readme(markdown: str) -> str:
    text = (ROOT / "README.md").read_text()
    return markdown.replace(README, re.sub(r"\]\(docs/", "](", text))


def render(markdown: str) -> str:
    """A page's markdown with every marker replaced by what it stands for."""
    if CONFIG_REFERENCE in markdown:
        markdown = config_reference(markdown)
    if README in markdown:
        markdown = readme(markdown)
    return markdown


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render(markdown)
