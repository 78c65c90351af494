"""Rule-generated instances in the spirit of BIG-Bench Hard: words, numbers, logic, dates.

Each function draws one instance from ``rng`` and returns plain values; the library and the
held-out suite turn them into prompts with their own instructions (and, for the suite, rules no
library task uses: xor, turns, nesting depth, reverse order).
"""

from __future__ import annotations

import datetime as dt
import random
import re

from benchmarks.tasks import WORDS

NUMBER_WORDS = ["one", "two", "three", "four", "five"]
FRUITS = ["apple", "banana", "peach", "plum", "grape", "orange", "strawberry", "nectarine"]
ANIMALS = ["cat", "dog", "rabbit", "goat", "cow", "pig", "duck", "horse"]
INSTRUMENTS = ["piano", "violin", "flute", "drum", "trumpet", "guitar", "cello"]
VEGETABLES = ["carrot", "onion", "potato", "cabbage", "lettuce", "celery", "yam"]
OBJECT_KINDS = {"fruits": FRUITS, "animals": ANIMALS, "musical instruments": INSTRUMENTS,
                "vegetables": VEGETABLES}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def words(rng: random.Random, lo: int = 2, hi: int = 6) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def bool_expr(rng: random.Random, ops: tuple[str, ...] = ("and", "or"), depth: int = 2,
              top: bool = True) -> tuple[str, bool]:
    """A fully parenthesised expression over True/False with ``ops`` and ``not`` (at least
    one binary operator)."""
    if depth == 0 or (not top and rng.random() < 0.3):
        v = rng.random() < 0.5
        if rng.random() < 0.3:
            return f"not {v}", not v
        return str(v), v
    a, va = bool_expr(rng, ops, depth - 1, False)
    b, vb = bool_expr(rng, ops, depth - 1, False)
    op = rng.choice(ops)
    val = {"and": va and vb, "or": va or vb, "xor": va != vb}[op]
    return f"( {a} {op} {b} )", val


def brackets(rng: random.Random, pairs: int) -> str:
    """A balanced sequence of ``pairs`` bracket pairs, space-separated."""
    out: list[str] = []
    stack: list[str] = []
    opened = 0
    while opened < pairs or stack:
        if opened < pairs and (not stack or rng.random() < 0.55):
            b = rng.choice(list(PAIRS))
            out.append(b)
            stack.append(b)
            opened += 1
        else:
            out.append(PAIRS[stack.pop()])
    return " ".join(out)


def is_balanced(seq: str) -> bool:
    stack: list[str] = []
    for ch in seq.split():
        if ch in PAIRS:
            stack.append(ch)
        elif not stack or PAIRS[stack.pop()] != ch:
            return False
    return not stack


def unbalance(seq: str, rng: random.Random) -> str:
    """The same sequence with one closing bracket swapped for a wrong one, or one dropped."""
    toks = seq.split()
    closes = [i for i, t in enumerate(toks) if t not in PAIRS]
    i = rng.choice(closes)
    if rng.random() < 0.5:
        toks[i] = rng.choice([c for c in PAIRS.values() if c != toks[i]])
    else:
        del toks[i]
    return " ".join(toks)


def depth(seq: str) -> int:
    d = best = 0
    for ch in seq.split():
        d += 1 if ch in PAIRS else -1
        best = max(best, d)
    return best


def dyck_prefix(rng: random.Random, pairs: int) -> tuple[str, str]:
    """An unfinished balanced sequence and the closing brackets that finish it."""
    toks = brackets(rng, pairs).split()
    stack: list[str] = []
    cut = rng.randint(1, len(toks) - 1)
    for t in toks[:cut]:
        if t in PAIRS:
            stack.append(t)
        else:
            stack.pop()
    if not stack:  # nothing left open: open one more
        toks = [*toks[:cut], "("]
        stack = ["("]
        cut = len(toks)
    return " ".join(toks[:cut]), " ".join(PAIRS[b] for b in reversed(stack))


DIRECTIONS = {"forward": (0, 1), "backward": (0, -1), "left": (-1, 0), "right": (1, 0)}
TURNS = {"Turn left.": 3, "Turn right.": 1, "Turn around.": 2}


def _step(k: int, direction: str = "") -> str:
    return f"Take {k} step{'s' if k > 1 else ''}{' ' + direction if direction else ''}."


def walk(instructions: list[str]) -> tuple[int, int]:
    """Where the instructions end (start at the origin facing north)."""
    x = y = heading = 0
    north = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    for ins in instructions:
        if ins in TURNS:
            heading = (heading + TURNS[ins]) % 4
            continue
        m = re.fullmatch(r"Take (\d+) steps?(?: (\w+))?\.", ins)
        assert m, ins
        k, d = int(m.group(1)), m.group(2)
        dx, dy = DIRECTIONS[d] if d else north[heading]
        x, y = x + dx * k, y + dy * k
    return x, y


def navigation(rng: random.Random, turns: bool) -> tuple[list[str], bool]:
    """Instructions and whether they end at the start (about half do).

    Without turns (always facing forward) the moves are shuffled with the moves that undo
    them; with turns the walk is retraced after ``Turn around.``. A walk meant not to return
    has one step count changed; the answer is always read from :func:`walk`."""
    back = rng.random() < 0.5
    if not turns:
        moves = [(rng.choice(list(DIRECTIONS)), rng.randint(1, 5))
                 for _ in range(rng.randint(1, 3))]
        x = sum(DIRECTIONS[d][0] * k for d, k in moves)
        y = sum(DIRECTIONS[d][1] * k for d, k in moves)
        undo = ([("backward" if y > 0 else "forward", abs(y))] if y else []) + \
            ([("left" if x > 0 else "right", abs(x))] if x else [])
        if not back:
            if not undo:
                undo = [(rng.choice(list(DIRECTIONS)), rng.randint(1, 3))]
            else:
                i = rng.randrange(len(undo))
                d, k = undo[i]
                undo[i] = (d, k + 1 if k == 1 or rng.random() < 0.5 else k - 1)
        seq = moves + undo
        rng.shuffle(seq)
        out = [_step(k, d) for d, k in seq]
    else:
        path: list[tuple[str, int]] = []
        for _ in range(rng.randint(2, 3)):
            path.append((rng.choice(["", "Turn left.", "Turn right."]), rng.randint(1, 5)))
        out = []
        for t, k in path:
            out += ([t] if t else []) + [_step(k)]
        swap = {"Turn left.": "Turn right.", "Turn right.": "Turn left.", "": ""}
        ret = []
        for t, k in reversed(path):
            ret += [_step(k)] + ([swap[t]] if t else [])
        if not back:
            i = rng.choice([j for j, r in enumerate(ret) if r.startswith("Take")])
            k = int(ret[i].split()[1])
            ret[i] = _step(k + 1 if k == 1 or rng.random() < 0.5 else k - 1)
        out += ["Turn around.", *ret]
    return out, walk(out) == (0, 0)


def objects(rng: random.Random, kind: str, distractor: str) -> tuple[str, int]:
    """'I have a cat, two dogs and a piano.' and how many of ``kind`` that is."""
    items, total = [], 0
    pool = [(w, True) for w in rng.sample(OBJECT_KINDS[kind], rng.randint(2, 4))]
    pool += [(w, False) for w in rng.sample(OBJECT_KINDS[distractor], rng.randint(0, 2))]
    rng.shuffle(pool)
    for w, counted in pool:
        k = rng.choice([1, 1, 2, 3])
        items.append(f"a {w}" if k == 1 else f"{NUMBER_WORDS[k - 1]} {plural(w)}")
        total += k if counted else 0
    text = ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]
    return f"I have {text}.", total


def plural(w: str) -> str:
    if w in ("potato", "tomato"):
        return w + "es"
    if w.endswith(("s", "sh", "ch")):
        return w + "es"
    if w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


def date(rng: random.Random) -> dt.date:
    return dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(0, 9000))


def fmt_date(d: dt.date) -> str:
    return d.strftime("%m/%d/%Y")
