"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_bytes", "format_table"]


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    max_width: int | None = None,
    optional: Sequence[int] = (),
) -> str:
    """Columns padded to their widest cell; numbers right-aligned. With ``max_width``, the
    ``optional`` columns (indices, most wanted first) are shown only while the table still
    fits in that many characters; the other columns always are."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    keep = [i for i in range(len(headers)) if i not in optional]
    for i in optional:
        wanted = sorted([*keep, i])
        if max_width is None or sum(widths[j] for j in wanted) + 2 * len(keep) <= max_width:
            keep = wanted
    cells = [[r[i] for i in keep] for r in cells]
    widths = [widths[i] for i in keep]
    numeric = [_numeric_column([r[i] for r in cells[1:]]) for i in range(len(keep))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def _numeric_column(cells: Sequence[str]) -> bool:
    """Numbers, or "-" where a row has none."""
    return any(c != "-" for c in cells) and all(c == "-" or _is_number(c) for c in cells)


def _is_number(value: object) -> bool:
    if isinstance(value, int | float):
        return True
    text = str(value).replace(",", "").rstrip("x%")
    try:
        float(text.split()[0] if text else "x")
    except ValueError:
        return False
    return True


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
