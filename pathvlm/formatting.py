"""Plain-text output shared by the command line and the apps (``pathvlm demo``): aligned tables."""
from __future__ import annotations


def table(rows: list[list], header: list[str]) -> str:
    """Rows under a header, columns left-aligned to their widest cell, a dashed rule below the header."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in cells[1:]])
