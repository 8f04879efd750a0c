"""Text templates: one sentence per item or user, built from its fields with `str.format`."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from peftrec.data.errors import DataError

DEFAULT_ITEM_TEMPLATE = "{title} ({year}). Genres: {genres}."
DEFAULT_USER_TEMPLATE = "A {age}-year-old {gender} {occupation}."

# Clean-ups for empty field values, applied in this order.
_TIDY = [
    (re.compile(r"\s*(\(\s*\)|\[\s*\])"), ""),  # "Title ()" -> "Title"
    # A label whose value is empty: "Title. Genres: ." -> "Title."
    (re.compile(r"(?:(?<=^)|(?<=[.!?;]))\s*[^.!?;:]*:\s*(?:[.!?;,]|$)"), ""),
    (re.compile(r"([,;])(?:\s*[,;])+"), r"\1"),  # "a, , b" -> "a, b"
    (re.compile(r"[,;]\s*(?=[.!?]|$)"), ""),  # "a, ." -> "a."
    (re.compile(r"\s+(?=[.,;:!?)\]](?:\s|$))"), ""),  # "word ." -> "word." (not "a .45")
    (re.compile(r"([(\[])\s+"), r"\1"),  # "( x" -> "(x"
    (re.compile(r"\s{2,}"), " "),
    (re.compile(r"^[\s.,;:!?-]+"), ""),  # leading punctuation left by an empty first field
]


def template_fields(template: str) -> list[str]:
    """Names of the fields a template uses, in order (``"{title} ({year})"`` -> title, year)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise DataError(f"malformed template {template!r}: {err}") from None
    names = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name or name.isdigit():
            raise DataError(
                f"template {template!r} has a positional field; name it, e.g. '{{title}}'"
            )
        names.append(name)
    return names


def tidy(text: str) -> str:
    """Remove what empty fields leave behind: empty brackets, bare labels, doubled spaces."""
    for pattern, replacement in _TIDY:
        text = pattern.sub(replacement, text)
    text = text.strip()
    return text if any(ch.isalnum() for ch in text) else ""


def render_texts(
    template: str, fields: Mapping[str, Sequence[str]], ids: Sequence[str], kind: str
) -> list[str]:
    """Fill `template` once per entity; `kind` ("item"/"user") is used in error messages."""
    names = template_fields(template)
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise DataError(
            f"{kind} template {template!r} names field {unknown[0]!r}, which does not exist; "
            f"available {kind} fields: {', '.join(map(repr, fields)) or 'none'}"
        )
    used = dict.fromkeys(names)
    texts = [
        tidy(template.format_map({name: fields[name][k] for name in used})) for k in range(len(ids))
    ]
    empty = [k for k, text in enumerate(texts) if not text]
    if empty:
        more = f" ({len(empty) - 1} more {kind}s too)" if len(empty) > 1 else ""
        raise DataError(
            f"{kind} {ids[empty[0]]!r} has an empty text with template {template!r}{more}; "
            f"fill its fields or use a template over fields it has"
        )
    return texts
