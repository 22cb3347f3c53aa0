"""Scalar filters: a Milvus boolean expression, or a dict turned into one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Union

#: A filter: a Milvus expression (``'doc_id == "a" and page > 2'``) or ``{field: value | [values]}``
#: (equality / ``in``, and-ed). Keys may be scalar fields or ``meta["key"]`` paths.
Filter = Union[str, Mapping[str, Any], None]  # noqa: UP007 - runtime alias, py3.10-friendly


def literal(value: Any) -> str:
    """A value as a Milvus expression literal (strings JSON-quoted, so quotes inside are escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"unsupported filter value type {type(value).__name__}")


def in_expr(target: str, values: Sequence[Any]) -> str:
    """``target`` equal to one of ``values``.

    Milvus rejects a JSON path on the left of ``in`` (``meta["k"] in [...]``), so those become or-ed equalities.
    """
    if not target.startswith("meta["):
        return f"{target} in [{', '.join(literal(v) for v in values)}]"
    if not values:
        return "false"
    return "(" + " or ".join(f"{target} == {literal(v)}" for v in values) + ")"


def to_expr(filters: Filter) -> str:
    """Milvus expression for ``filters`` ("" = no filter)."""
    if filters is None:
        return ""
    if isinstance(filters, str):
        return filters.strip()
    parts = []
    for key, value in filters.items():
        if isinstance(value, Sequence) and not isinstance(value, str):
            parts.append(in_expr(key, value))
        else:
            parts.append(f"{key} == {literal(value)}")
    return " and ".join(parts)


def and_exprs(*exprs: str) -> str:
    """Join non-empty expressions with ``and`` (each parenthesized)."""
    kept = [e for e in exprs if e]
    if len(kept) <= 1:
        return kept[0] if kept else ""
    return " and ".join(f"({e})" for e in kept)
