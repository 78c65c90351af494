"""The lineage graph as inline SVG: parents on the left, the adapter in the middle, what was
made from it on the right; every visible node is a link to its own lineage page, so following
an edge is one click. Parents the viewer may not see are drawn as anonymous boxes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

from lorahive.registry.service import LineageEdge

NODE_W, NODE_H, GAP, PAD = 250, 46, 12, 12
MAX_NODES = 40


def _label(e: LineageEdge) -> tuple[str, str]:
    if e.hidden:
        return "private adapter", "not visible to you"
    if e.local is not None:
        name = e.local.rstrip("/").rsplit("/", 1)[-1] or e.local
        return name, "local directory"
    sub = f"@{e.version}" if e.version else ""
    if e.weight is not None:
        sub += f" · weight {e.weight:.4g}"
    if e.method:
        sub += f" · {e.method}"
    return e.repo or "?", sub.strip(" ·")


def _short(s: str, n: int = 34) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _node(x: float, y: float, e: LineageEdge | None, title: str, sub: str, href: str | None,
          cls: str) -> str:
    body = (f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text class="n1" x="{x + 12}" y="{y + 19}">{escape(_short(title))}</text>'
            f'<text class="n2" x="{x + 12}" y="{y + 36}">{escape(_short(sub, 40))}</text>'
            f"<title>{escape(title)}{' ' + escape(sub) if sub else ''}</title>")
    if href:
        return f'<a class="node {cls}" href="{escape(href)}">{body}</a>'
    return f'<g class="node {cls}">{body}</g>'


def lineage_svg(center: tuple[str, str], parents: Sequence[LineageEdge],
                children: Sequence[LineageEdge], href: Callable[[LineageEdge], str | None]
                ) -> Markup:
    """``center`` is (title, subtitle) of the adapter shown; ``href`` links a visible node."""
    ps, cs = list(parents[:MAX_NODES]), list(children[:MAX_NODES])
    rows = max(len(ps) + (len(parents) > MAX_NODES), len(cs) + (len(children) > MAX_NODES), 1)
    height = PAD * 2 + rows * NODE_H + (rows - 1) * GAP
    cols = [PAD, PAD + NODE_W + 90, PAD + 2 * (NODE_W + 90)]
    width = cols[2] + NODE_W + PAD
    cy = height / 2 - NODE_H / 2
    out = [f'<svg class="lineage" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="lineage graph" xmlns="http://www.w3.org/2000/svg">']

    def column(edges: list[LineageEdge], total: int) -> list[float]:
        n = len(edges) + (total > len(edges))
        top = height / 2 - (n * NODE_H + (n - 1) * GAP) / 2
        return [top + i * (NODE_H + GAP) for i in range(n)]

    for side, edges, total in ((0, ps, len(parents)), (2, cs, len(children))):
        ys = column(edges, total)
        for e, y in zip(edges, ys, strict=False):
            x = cols[side]
            x_from, y_from = (x + NODE_W, y + NODE_H / 2) if side == 0 else (cols[1] + NODE_W, cy + NODE_H / 2)
            x_to, y_to = (cols[1], cy + NODE_H / 2) if side == 0 else (x, y + NODE_H / 2)
            mid = (x_from + x_to) / 2
            out.append(f'<path class="edge" d="M{x_from},{y_from:.1f} C{mid},{y_from:.1f} '
                       f'{mid},{y_to:.1f} {x_to},{y_to:.1f}"/>')
            title, sub = _label(e)
            cls = "hidden" if e.hidden else ("local" if e.local else "parent" if side == 0 else "child")
            out.append(_node(x, y, e, title, sub, None if e.hidden or e.local else href(e), cls))
        if total > len(edges):
            more = total - len(edges)
            out.append(_node(cols[side], ys[-1], None, f"+{more} more", "listed below", None,
                             "more"))
        if not edges:
            title = "no recorded parents" if side == 0 else "nothing made from it yet"
            sub = "" if side == 0 else "fuse or compose it to see it here"
            out.append(_node(cols[side], cy, None, title, sub, None, "more"))
    out.append(_node(cols[1], cy, None, center[0], center[1], None, "center"))
    out.append("</svg>")
    return Markup("".join(out))
