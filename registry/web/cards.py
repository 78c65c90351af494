"""Model cards as HTML that cannot run anything: Markdown rendered by markdown-it-py, then
sanitised by nh3 (ammonia: an allow-list of tags, attributes and URL schemes; scripts and styles
are dropped with their content, comments removed). Raw HTML in the Markdown is allowed through
to the sanitiser, as the Hub renders cards, so PEFT's card template (HTML comments) reads well.

A card is publisher-controlled text, so its cost is bounded too: at most ``MAX_CHARS`` are
rendered, and a card whose Markdown takes longer than ``RENDER_SECONDS`` to parse (huge tables,
pathological nesting of brackets or emphasis) is shown as plain text instead. Cards are
content-addressed, so each rendering is cached by the text's hash.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from lorahive.hub.modelcard import split_card

MAX_CHARS = 100_000
MAX_TABLE_CELLS = 20_000  # a table's cost is columns x rows, decided by its header line
RENDER_SECONDS = 1.0
CACHE_SIZE = 256
TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}


class _TooSlow(Exception):
    pass


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    def block_deadline(state: Any, start: int, end: int, silent: bool) -> bool:
        if time.monotonic() > state.env["deadline"]:
            raise _TooSlow
        return False

    def inline_deadline(state: Any, silent: bool) -> bool:
        if time.monotonic() > state.env["deadline"]:
            raise _TooSlow
        return False

    md.block.ruler.before(md.block.ruler.get_all_rules()[0], "deadline", block_deadline)
    md.inline.ruler.before(md.inline.ruler.get_all_rules()[0], "deadline", inline_deadline)
    return md


@dataclass(frozen=True)
class Card:
    front: dict[str, Any]
    html: Markup
    truncated: bool  # only the first MAX_CHARS were rendered
    plain: bool  # too costly to render as Markdown: shown as text


_MD = _parser()
_cache: OrderedDict[str, Card] = OrderedDict()
_lock = threading.Lock()


def sanitise(html: str) -> str:
    return nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES,
                     link_rel="noopener noreferrer nofollow", strip_comments=True)


def markdown_html(text: str, budget: float | None = None) -> tuple[str, bool]:
    """``(sanitised HTML, rendered as Markdown)``; plain escaped text when over budget
    (``RENDER_SECONDS`` unless given)."""
    env = {"deadline": time.monotonic() + (RENDER_SECONDS if budget is None else budget)}
    if table_cells(text) > MAX_TABLE_CELLS:
        return f'<pre class="card-plain">{escape(text)}</pre>', False
    try:
        tokens = _MD.parse(text, env)
    except (_TooSlow, RecursionError):
        return f'<pre class="card-plain">{escape(text)}</pre>', False
    return sanitise(_MD.renderer.render(tokens, _MD.options, env)), True


def table_cells(text: str) -> int:
    """An upper bound of the cells Markdown tables in ``text`` would make: every run of lines
    holding ``|`` counts as a table as wide as its first line (markdown-it pads short rows up
    to the header's width, so a wide header over many short lines is the costly case)."""
    cells = width = 0
    for line in text.splitlines():
        if "|" in line:
            width = width or line.count("|") + 1
            cells += width
        else:
            width = 0
    return cells


def render_card(text: str) -> Card:
    """The card's front matter and its body as safe HTML (cached by content)."""
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    front, body = split_card(text)
    truncated = len(body) > MAX_CHARS
    html, ok = markdown_html(body[:MAX_CHARS])
    card = Card(front, Markup(html), truncated, not ok)
    with _lock:
        _cache[key] = card
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return card


def brief(value: Any, limit: int = 300) -> str:
    """A short one-line rendering of a YAML/JSON value that never expands more than ``limit``
    characters, however deeply nested or aliased (YAML anchors can make a tiny document a huge
    tree)."""
    out: list[str] = []
    size = 0

    def put(s: str) -> None:
        nonlocal size
        out.append(s)
        size += len(s)
        if size > limit:
            raise StopIteration

    def walk(v: Any, depth: int) -> None:
        if depth > 6:
            put("…")
        elif isinstance(v, dict):
            put("{")
            for i, (k, x) in enumerate(v.items()):
                put(("" if i == 0 else ", ") + f"{k}: ")
                walk(x, depth + 1)
            put("}")
        elif isinstance(v, list | tuple):
            put("[")
            for i, x in enumerate(v):
                if i:
                    put(", ")
                walk(x, depth + 1)
            put("]")
        elif isinstance(v, float):
            put(f"{v:.6g}")
        else:
            put(str(v))

    try:
        walk(value, 0)
    except StopIteration:
        return "".join(out)[:limit] + "…"
    return "".join(out)
