"""A Griffe extension for the API pages: Sphinx roles in docstrings become plain code.

The docstrings cross-reference with Sphinx roles (``:meth:`add_items```,
``:class:`~peftrec.models.network.RecModel```), which Markdown would show with the role in front. This
keeps the name as inline code (the last dotted part when it starts with ``~``, as Sphinx does) and
changes nothing in the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:meth|func|class|mod|attr|data|obj|exc):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    short, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles as inline code in every docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
