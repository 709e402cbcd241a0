"""Plain-text tables for iopfctl: left-aligned columns, a header, no decoration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def cell(value: object) -> str:
    """How one value reads in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def render(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, object]],
    headers: Mapping[str, str] | None = None,
) -> str:
    """Rows as a table of ``columns`` (keys of each row); missing keys show as ``-``."""
    heads = [(headers or {}).get(c, c.upper()) for c in columns]
    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines.extend(
        "  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)).rstrip() for b in body
    )
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    """``name: value`` lines, names padded to one width."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in pairs)
