"""The held-out suite's tasks: none is a library task, each shares a format, a domain or a skill
with the library.

Three kinds, as the ``kind`` field says: an unseen domain-by-format pair (the library has the
domain and the format, never together), a composition of two library skills, and a rule task
with a rule no library task uses. Corpus tasks read only the ``suite`` side of each corpus
(``benchmarks.corpora``) and chatterbot categories the library never uses, so no held-out text
is in any training set (``tests/test_bench_tasks.py`` checks it).

Each task has one fixed instruction, as a user would write it. ``splits`` makes a fixed
evaluation set and a disjoint pool from which the few-shot examples of every seed are drawn
(and on which the upper-bound LoRA is trained).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from benchmarks import rules
from benchmarks.corpora import (
    MENTION,
    Item,
    bbc,
    chat,
    clip,
    food,
    mc,
    tweets,
    unique,
)
from benchmarks.library_tasks import LIBRARY_CHAT
from benchmarks.tasks import balanced

SUITE_CHAT = ("emotion", "literature", "money", "movies")  # chat_domain's labels
QUESTION_CHAT = ("coding", "science", "sports", "politics", "history")  # text_kind's questions
assert not set(SUITE_CHAT + QUESTION_CHAT) & set(LIBRARY_CHAT)

N_EVAL = 100
POOL = 320  # examples kept for few-shot draws and the upper-bound LoRA
RESERVE = 8  # examples of each label the evaluation set leaves for the shots, data allowing


@dataclass(frozen=True)
class SuiteTask:
    name: str
    kind: str  # unseen-pair, composition, unseen-rule
    shares: str  # what it shares with the library, in words
    template: str
    make: Callable[[int, random.Random], list[tuple[dict[str, str], str, str]]]

    def items(self, n: int, rng: random.Random) -> list[Item]:
        return [Item(self.template.format(**f), " " + a, src)
                for f, a, src in self.make(n, rng)]


SUITE: dict[str, SuiteTask] = {}


def suite_task(name: str, kind: str, shares: str, template: str):
    def deco(fn):
        SUITE[name] = SuiteTask(name, kind, shares, template, fn)
        return fn
    return deco


def _grouped(rows, n: int, rng: random.Random):
    """Balance (fields, answer, source) rows over answers."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r[1], []).append(r)
    return balanced(groups, n, rng)


def _rule(n: int, rng: random.Random, draw, balance: bool = True):
    rows = [draw(rng) for _ in range(4 * n + 16)]
    return _grouped(rows, n, rng) if balance else rows[:n + n // 4 + 16]


@suite_task("news_sport_yesno", "unseen-pair", "news x yes/no (library: news topic label, "
            "MC, extraction; yes/no on reviews, chat, tweets, rules)",
            "{x}\nIs this news about sport? Answer yes or no:")
def news_sport_yesno(n, rng):
    rows = [({"x": clip(b, 200)}, "yes" if k == "sport" else "no", b)
            for k, v in bbc("suite").items() for _, b in v]
    return _grouped(rows, n, rng)


@suite_task("review_mc", "unseen-pair", "reviews x multiple choice (library: review label, "
            "yes/no; lettered choices on news, chat, logic)",
            "Review: {x}\nHow did the customer rate the product?\n{options}\nAnswer:")
def review_mc(n, rng):
    # balanced over the true rating, so a constant letter or a constant rating both score 50%
    groups: dict[str, list] = {}
    for r, s in food("suite"):
        ans = "5 stars" if s == "great" else "fewer than 5 stars"
        opts, letter = mc(ans, ["fewer than 5 stars" if s == "great" else "5 stars"], 2, rng)
        groups.setdefault(s, []).append(({"x": clip(r, 200), "options": opts}, letter, r))
    return balanced(groups, n, rng)


@suite_task("tweet_mention_yesno", "unseen-pair", "tweets x a new yes/no question (library: "
            "extract a tweet's @mention; yes/no on links)",
            "{x}\nDoes this tweet mention another account? Answer yes or no:")
def tweet_mention_yesno(n, rng):
    rows = [({"x": clip(t.text, 200)}, "yes" if MENTION.search(clip(t.text, 200)) else "no",
             t.text) for t in tweets("suite")]
    return _grouped(rows, n, rng)


@suite_task("chat_domain", "unseen-pair", "chat questions x a label set no adapter saw "
            "(library: chat topic over ai, psychology, trivia, support)",
            "{x}\nDomain (emotion, literature, money or movies):")
def chat_domain(n, rng):
    c = chat()
    rows = [({"x": clip(q, 150)}, cat, q) for cat in SUITE_CHAT for q, _ in c[cat]]
    return _grouped(rows, n, rng)


@suite_task("text_kind", "unseen-pair", "news and chat texts x a new label (article or "
            "question)", "{x}\nIs this a news article or a question? Answer article or question:")
def text_kind(n, rng):
    c = chat()
    rows = [({"x": clip(b, 300)}, "article", b) for v in bbc("suite").values() for _, b in v]
    rows += [({"x": clip(q, 150)}, "question", q) for cat in QUESTION_CHAT for q, _ in c[cat]
             if q.endswith("?")]
    return _grouped(rows, n, rng)


@suite_task("last_word_upper", "composition", "last_word + uppercase",
            "Last word in capitals: {x}\nOutput:")
def last_word_upper(n, rng):
    def draw(rng):
        w = rules.words(rng)
        return {"x": " ".join(w)}, w[-1].upper(), " ".join(w)
    return _rule(n, rng, draw, balance=False)


@suite_task("sort_reverse", "unseen-rule", "word_sorting and reverse_words: reverse "
            "alphabetical order", "Sort the words in reverse alphabetical order: {x}\nOutput:")
def sort_reverse(n, rng):
    def draw(rng):
        w = rules.words(rng, 3, 5)
        return {"x": " ".join(w)}, " ".join(sorted(w, reverse=True)), " ".join(w)
    return _rule(n, rng, draw, balance=False)


@suite_task("word_count_parity", "composition", "count_words + is_even",
            "Words: {x}\nIs the number of words even or odd?")
def word_count_parity(n, rng):
    def draw(rng):
        w = rules.words(rng, 1, 8)
        return {"x": " ".join(w)}, "even" if len(w) % 2 == 0 else "odd", " ".join(w)
    return _rule(n, rng, draw)


@suite_task("boolean_xor", "unseen-rule", "boolean_expressions with xor",
            "Evaluate the expression (xor is true when exactly one side is true): {x}\n"
            "Answer True or False:")
def boolean_xor(n, rng):
    def draw(rng):
        e, v = rules.bool_expr(rng, ("xor", "and", "or"))
        while "xor" not in e:
            e, v = rules.bool_expr(rng, ("xor", "and", "or"))
        return {"x": e}, str(v), e
    return _rule(n, rng, draw)


@suite_task("navigate_turns", "unseen-rule", "navigation with turns (library: always face "
            "forward)", "Follow the instructions, starting facing north: {x}\n"
            "Are you back at the starting point? Answer yes or no:")
def navigate_turns(n, rng):
    def draw(rng):
        ins, back = rules.navigation(rng, turns=True)
        return {"x": " ".join(ins)}, "yes" if back else "no", " ".join(ins)
    return _rule(n, rng, draw)


@suite_task("count_objects_mc", "composition", "object_counting + lettered choice, on a "
            "kind no library task counts (musical instruments)",
            "{x} How many musical instruments do I have?\n{options}\nAnswer:")
def count_objects_mc(n, rng):
    def draw(rng):
        text, k = rules.objects(rng, "musical instruments", rng.choice(["fruits", "animals"]))
        wrong = [str(v) for v in range(max(0, k - 3), k + 4) if v != k]
        opts, letter = mc(str(k), wrong, 4, rng)
        return {"x": text, "options": opts}, letter, text
    return _rule(n, rng, draw)


@suite_task("bracket_depth", "unseen-rule", "brackets (balanced, Dyck) + counting: the "
            "deepest nesting", "How deeply are these brackets nested? {x}\nDepth:")
def bracket_depth(n, rng):
    def draw(rng):
        s = rules.brackets(rng, rng.randint(2, 5))
        return {"x": s}, str(rules.depth(s)), s
    return _rule(n, rng, draw)


@cache
def splits(name: str, n_eval: int = N_EVAL, pool: int = POOL) -> tuple[tuple[Item, ...],
                                                                      tuple[Item, ...]]:
    """(pool, evaluation set): disjoint inputs, fixed for the task whatever the seed."""
    spec = SUITE[name]
    rows = unique(spec.items(n_eval + pool, random.Random(f"suite:{name}")))
    if len(rows) < n_eval + 5:
        raise ValueError(f"{name}: only {len(rows)} distinct examples")
    labels = sorted({e.output for e in rows})
    if len(labels) > 10:
        return tuple(rows[n_eval:n_eval + pool]), tuple(rows[:n_eval])
    # a label set: each label first keeps a few examples back for the shots (a small category
    # must not go wholly into the evaluation set, leaving every draw of shots one label), then
    # the evaluation set takes labels in turn (as balanced as the data allows)
    keep = min(RESERVE, (len(rows) - n_eval) // len(labels))
    groups = {lab: [e for e in rows if e.output == lab] for lab in labels}
    groups = {lab: g[:len(g) - min(keep, len(g) - 1)] for lab, g in groups.items()}
    chosen: list[Item] = []
    while len(chosen) < n_eval:
        if not any(groups.values()):
            raise ValueError(f"{name}: only {len(chosen)} evaluation examples after keeping "
                             f"{keep} of each label for the shots")
        for lab in labels:
            if groups[lab] and len(chosen) < n_eval:
                chosen.append(groups[lab].pop(0))
    picked = set(chosen)
    ev = [e for e in rows if e in picked]
    rest = tuple(e for e in rows if e not in picked)[:pool]
    short = [lab for lab in labels if sum(e.output == lab for e in rest) < min(keep, 1)]
    if short:
        raise ValueError(f"{name}: no example of {short} left for the shots")
    return rest, tuple(ev)


def draw_shots(name: str, seed: int, k: int = 5) -> list[Item]:
    """``k`` few-shot examples from the task's pool; every label at least once when the task
    has at most ``k`` labels (as a user would pick them)."""
    pool, _ = splits(name)
    rng = random.Random(f"shots:{name}:{seed}")
    order = rng.sample(list(pool), len(pool))
    labels = sorted({e.output for e in pool})
    out: list[Item] = []
    if len(labels) <= k:
        for lab in labels:
            out.append(next(e for e in order if e.output == lab))
    for e in order:
        if len(out) >= k:
            break
        if e not in out:
            out.append(e)
    rng.shuffle(out)
    return out
