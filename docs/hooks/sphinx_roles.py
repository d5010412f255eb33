"""MkDocs hook: render the Sphinx roles used in docstrings as plain code.

Docstrings in the package cross-reference with Sphinx roles (``:class:`~pb_adapters.HubError```),
which Markdown leaves as literal text. After a page is converted to HTML, each role is removed
and, as in Sphinx, a leading ``~`` shortens the name to its last component.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:attr|class|const|data|exc|func|meth|mod|obj):<code>(~?)([^<]*)</code>"
)


def _replace(match: re.Match[str]) -> str:
    short, name = match.groups()
    if short:
        name = name.rsplit(".", 1)[-1]
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Strip Sphinx roles from the rendered page."""
    return _ROLE.sub(_replace, html)
