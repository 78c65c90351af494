"""The adapter library's training tasks: formats crossed with domains, several phrasings each.

A task is a builder ``(n, rng) -> [Item]`` registered with its domain, answer format, skill,
description and instruction templates; every example uses one of the templates at random, as
FLAN mixes phrasings. Corpus tasks read only the ``library`` side of each corpus
(``benchmarks.corpora``) and chatterbot categories the held-out suite never uses.

Formats: ``yesno``, ``multiple-choice`` (lettered), ``label`` (a word from a fixed set),
``extraction`` (a span of the input), ``transformation`` (the input rewritten), ``arithmetic``
(a number) and ``generation`` (a short free answer).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import rules
from benchmarks.corpora import (
    HASHTAG,
    LINK,
    MENTION,
    Item,
    bbc,
    chat,
    clip,
    food,
    mc,
    render,
    tweets,
    unique,
)
from benchmarks.tasks import balanced

# chatterbot categories the library may use; the suite uses others (see suite_tasks)
LIBRARY_CHAT = ("ai", "psychology", "trivia", "tech_support", "botprofile", "computers",
                "greetings", "conversations", "humor", "gossip")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    domain: str
    format: str
    skill: str
    description: str
    templates: tuple[str, ...]
    make: Callable[[int, random.Random, tuple[str, ...]], list[Item]]

    def build(self, n: int, seed: int = 0) -> list[Item]:
        return unique(self.make(n, random.Random(f"{self.name}:{seed}"), self.templates))[:n]

    @property
    def tags(self) -> list[str]:
        return [f"domain-{self.domain}", f"format-{self.format}", f"skill-{self.skill}"]


LIBRARY: dict[str, TaskSpec] = {}


def task(name: str, domain: str, fmt: str, skill: str, description: str, *templates: str):
    def deco(fn):
        LIBRARY[name] = TaskSpec(name, domain, fmt, skill, description, templates, fn)
        return fn
    return deco


def _repeat(n: int, rng: random.Random, t: tuple[str, ...], draw) -> list[Item]:
    """``n`` (plus some spare for de-duplication) instances of a rule task."""
    out = []
    for _ in range(n + n // 4 + 8):
        fields, answer = draw(rng)
        out.append(render(t, fields, answer, rng, fields.get("x", "")))
    return out


def _by_answer(n: int, rng: random.Random, t: tuple[str, ...], draw, tries: int = 4
               ) -> list[Item]:
    """Like ``_repeat`` but balanced over the answers (for yes/no and label rule tasks)."""
    groups: dict[str, list[Item]] = {}
    for _ in range(tries * n + 8):
        fields, answer = draw(rng)
        groups.setdefault(answer, []).append(render(t, fields, answer, rng, fields.get("x", "")))
    return balanced(groups, n + n // 4, rng)


def _pick(groups: dict[str, list], n: int, rng: random.Random) -> list[tuple[str, object]]:
    """``n`` (label, row) pairs drawn round-robin over labels: rows are rendered only once
    picked, so a task over a large corpus builds in milliseconds."""
    return balanced({k: [(k, r) for r in v] for k, v in groups.items()}, n, rng)


TOPICS = ("business", "entertainment", "politics", "sport", "tech")


# news (BBC) ----------------------------------------------------------------------------------
@task("news_topic", "news", "label", "topic",
      "Topic of a BBC news article: business, entertainment, politics, sport or tech.",
      "Article: {x}\nTopic:",
      "{x}\n\nWhat is this article about? business, entertainment, politics, sport or tech?",
      "Classify the news story as business, entertainment, politics, sport or tech.\n{x}\n"
      "Answer:")
def news_topic(n, rng, t):
    groups = {k: [b for _, b in v] for k, v in bbc("library").items()}
    return [render(t, {"x": clip(b, 200)}, k, rng, b) for k, b in _pick(groups, n, rng)]


@task("news_topic_mc", "news", "multiple-choice", "topic",
      "Section of a BBC news article, as a lettered choice among four topics.",
      "{x}\nWhich section does this story belong in?\n{options}\nAnswer:",
      "Article: {x}\nQuestion: What is the topic?\n{options}\nAnswer with the letter:",
      "Pick the best label for the article.\n{x}\n{options}\nAnswer:")
def news_topic_mc(n, rng, t):
    out = []
    for k, b in _pick({k: [b for _, b in v] for k, v in bbc("library").items()}, n, rng):
        opts, letter = mc(k, [x for x in TOPICS if x != k], 4, rng)
        out.append(render(t, {"x": clip(b, 200), "options": opts}, letter, rng, b))
    return out


@task("news_headline", "news", "extraction", "headline",
      "Copy the headline (first line) of a BBC news story.",
      "{head}\n{x}\n\nCopy the headline of this story:",
      "Story:\n{head}\n{x}\nWhat is the title?",
      "{head}\n{x}\nHeadline:")
def news_headline(n, rng, t):
    rows = [(h, b) for v in bbc("library").values() for h, b in v]
    return [render(t, {"head": h, "x": clip(b, 160)}, h, rng, b)
            for h, b in rng.sample(rows, min(len(rows), n + 8))]


@task("news_first_number", "news", "extraction", "number-span",
      "The first number written in digits in a BBC news story.",
      "{x}\nWhat is the first number in the text?",
      "Text: {x}\nFirst number mentioned:",
      "Find the first figure given in digits.\n{x}\nAnswer:")
def news_first_number(n, rng, t):
    import re

    out = []
    rows = [b for v in bbc("library").values() for _, b in v]
    for b in rng.sample(rows, len(rows)):
        x = clip(b, 220)
        m = re.search(r"\b\d[\d,.]*\d\b|\b\d\b", x)
        if m:
            out.append(render(t, {"x": x}, m.group(0).rstrip(".,"), rng, b))
        if len(out) >= n + 8:
            break
    return out


# reviews (fine food) -------------------------------------------------------------------------
@task("review_sentiment", "reviews", "label", "sentiment",
      "Rating of a fine-food review: great (5 stars) or other.",
      "Review: {x}\nRating (great or other):",
      "{x}\nWas this review great or other?",
      "Product review: {x}\nIs the rating great or other? Answer:")
def review_sentiment(n, rng, t):
    groups: dict[str, list[str]] = {"great": [], "other": []}
    for r, s in food("library"):
        groups[s].append(r)
    return [render(t, {"x": clip(r, 200)}, s, rng, r) for s, r in _pick(groups, n, rng)]


@task("review_negative_yesno", "reviews", "yesno", "sentiment",
      "Whether a fine-food review is less than enthusiastic (not a 5-star rating).",
      "{x}\nWas the customer disappointed? Answer yes or no:",
      "Review: {x}\nIs this review critical? yes or no:",
      "Read the review and say whether the buyer was unhappy (yes or no).\n{x}\nAnswer:")
def review_negative_yesno(n, rng, t):
    groups: dict[str, list[str]] = {"yes": [], "no": []}
    for r, s in food("library"):
        groups["no" if s == "great" else "yes"].append(r)
    return [render(t, {"x": clip(r, 200)}, a, rng, r) for a, r in _pick(groups, n, rng)]


@task("review_first_words", "reviews", "extraction", "span",
      "The first three words of a fine-food review.",
      "{x}\nQuote the first three words of the review:",
      "Review: {x}\nFirst three words:",
      "Copy the opening three words.\n{x}\nAnswer:")
def review_first_words(n, rng, t):
    rows = [r for r, _ in food("library") if len(r.split()) >= 5]
    return [render(t, {"x": clip(r, 160)}, " ".join(r.split()[:3]), rng, r)
            for r in rng.sample(rows, min(len(rows), n + 8))]


@task("review_word_count", "reviews", "arithmetic", "count",
      "How many words a short review snippet has.",
      "Snippet: {x}\nHow many words?",
      "Count the words in: {x}\nAnswer:",
      "{x}\nNumber of words:")
def review_word_count(n, rng, t):
    rows = [r for r, _ in food("library") if len(r.split()) >= 3]
    out = []
    for r in rng.sample(rows, min(len(rows), n + 8)):
        snippet = " ".join(r.split()[:rng.randint(2, 8)])
        out.append(render(t, {"x": snippet}, str(len(snippet.split())), rng, r))
    return out


# chat (chatterbot corpus, library categories) ---------------------------------------------------
CHAT_TOPICS = {"ai": "ai", "psychology": "psychology", "trivia": "trivia",
               "tech_support": "support"}


@task("chat_topic", "chat", "label", "topic",
      "Category of a chatbot question: ai, psychology, trivia or support.",
      "Question: {x}\nCategory:",
      "{x}\nIs this about ai, psychology, trivia or support?",
      "Sort the message into ai, psychology, trivia or support.\nMessage: {x}\nAnswer:")
def chat_topic(n, rng, t):
    c = chat()
    groups = {lab: [q for q, _ in c[cat]] for cat, lab in CHAT_TOPICS.items()}
    return [render(t, {"x": clip(q, 150)}, lab, rng, q) for lab, q in _pick(groups, n, rng)]


@task("chat_topic_mc", "chat", "multiple-choice", "topic",
      "Category of a chatbot question as a lettered choice.",
      "{x}\nWhat kind of question is this?\n{options}\nAnswer:",
      "Question: {x}\nCategory options:\n{options}\nAnswer with the letter:",
      "Choose the category.\n{x}\n{options}\nAnswer:")
def chat_topic_mc(n, rng, t):
    c = chat()
    labs = list(CHAT_TOPICS.values())
    out = []
    for lab, q in _pick({lab: [q for q, _ in c[cat]] for cat, lab in CHAT_TOPICS.items()},
                        n, rng):
        opts, letter = mc(lab, [x for x in labs if x != lab], 3, rng)
        out.append(render(t, {"x": clip(q, 150), "options": opts}, letter, rng, q))
    return out


@task("chat_tech_yesno", "chat", "yesno", "topic",
      "Whether a chatbot message is a technical support question.",
      "{x}\nIs this a tech support question? Answer yes or no:",
      "Message: {x}\nDoes the user need technical help? yes or no:",
      "Say yes if the message asks for computer help, otherwise no.\n{x}\nAnswer:")
def chat_tech_yesno(n, rng, t):
    c = chat()
    groups: dict[str, list[str]] = {"yes": [], "no": []}
    for cat in ("tech_support", "computers", "ai", "psychology", "trivia", "humor", "gossip"):
        groups["yes" if cat in ("tech_support", "computers") else "no"] += [q for q, _ in c[cat]]
    return [render(t, {"x": clip(q, 150)}, a, rng, q) for a, q in _pick(groups, n, rng)]


@task("trivia_qa", "chat", "generation", "qa",
      "Short answers to trivia questions.",
      "Q: {x}\nA:", "Question: {x}\nShort answer:", "{x}\nAnswer briefly:")
def trivia_qa(n, rng, t):
    rows = [(q, a) for q, a in chat()["trivia"] if len(q) >= 10 and a.strip()]
    return [render(t, {"x": clip(q, 150)}, clip(a, 60), rng, q)
            for q, a in rng.sample(rows, min(n + 8, len(rows)))]


@task("chat_reply", "chat", "generation", "dialogue",
      "A chatbot's reply to small talk and questions about itself.",
      "User: {x}\nBot:", "Reply to the message.\n{x}\nReply:", "{x}\nResponse:")
def chat_reply(n, rng, t):
    c = chat()
    rows = [(q, a) for cat in ("ai", "botprofile", "psychology", "greetings", "conversations",
                               "humor") for q, a in c[cat] if a.strip()]
    return [render(t, {"x": clip(q, 150)}, clip(a, 60), rng, q)
            for q, a in rng.sample(rows, min(n + 8, len(rows)))]


# tweets ---------------------------------------------------------------------------------------
@task("tweet_device", "tweets", "label", "source",
      "Which client posted a tweet: android, iphone or web.",
      "Tweet: {x}\nPosted from (android, iphone or web):",
      "{x}\nWas this tweet sent from android, iphone or web?",
      "Guess the device of the tweet (android, iphone, web).\n{x}\nAnswer:")
def tweet_device(n, rng, t):
    groups: dict[str, list[str]] = {}
    for tw in tweets("library"):
        groups.setdefault(tw.source, []).append(tw.text)
    return [render(t, {"x": clip(x, 200)}, k, rng, x) for k, x in _pick(groups, n, rng)]


@task("tweet_era", "tweets", "label", "time",
      "Whether a tweet is from before the 2015 campaign (early) or after (campaign).",
      "Tweet: {x}\nEra (early or campaign):",
      "{x}\nIs this tweet early or campaign?",
      "Date the tweet: early (before 2015) or campaign (2015 on).\n{x}\nAnswer:")
def tweet_era(n, rng, t):
    groups: dict[str, list[str]] = {"early": [], "campaign": []}
    for tw in tweets("library"):
        groups["early" if tw.year < 2015 else "campaign"].append(tw.text)
    return [render(t, {"x": clip(x, 200)}, k, rng, x) for k, x in _pick(groups, n, rng)]


@task("tweet_has_link", "tweets", "yesno", "link",
      "Whether a tweet contains a web link.",
      "{x}\nDoes this tweet contain a link? Answer yes or no:",
      "Tweet: {x}\nIs there a URL in it? yes or no:",
      "Answer yes if the tweet links to a web page, else no.\n{x}\nAnswer:")
def tweet_has_link(n, rng, t):
    groups: dict[str, list[str]] = {"yes": [], "no": []}
    for tw in tweets("library"):
        groups["yes" if LINK.search(tw.text) else "no"].append(tw.text)
    return [render(t, {"x": clip(x, 200)}, k, rng, x) for k, x in _pick(groups, n, rng)]


@task("tweet_hashtag", "tweets", "extraction", "hashtag",
      "The hashtag of a tweet that has exactly one.",
      "{x}\nWhich hashtag does the tweet use?", "Tweet: {x}\nHashtag:",
      "Extract the hashtag.\n{x}\nAnswer:")
def tweet_hashtag(n, rng, t):
    rows = [tw.text for tw in tweets("library") if len(HASHTAG.findall(clip(tw.text, 200))) == 1]
    return [render(t, {"x": clip(x, 200)}, HASHTAG.findall(clip(x, 200))[0], rng, x)
            for x in rng.sample(rows, min(n + 8, len(rows)))]


@task("tweet_mention", "tweets", "extraction", "mention",
      "The first account a tweet mentions (@name).",
      "{x}\nWho is mentioned first? Give the @handle:", "Tweet: {x}\nFirst mention:",
      "Extract the first @mention.\n{x}\nAnswer:")
def tweet_mention(n, rng, t):
    rows = [tw.text for tw in tweets("library") if MENTION.search(clip(tw.text, 200))]
    return [render(t, {"x": clip(x, 200)}, MENTION.search(clip(x, 200)).group(0), rng, x)
            for x in rng.sample(rows, min(n + 8, len(rows)))]


@task("tweet_hashtag_count", "tweets", "arithmetic", "hashtag",
      "How many hashtags a tweet has (0 to 3).",
      "{x}\nHow many hashtags are in this tweet?", "Tweet: {x}\nNumber of hashtags:",
      "Count the hashtags.\n{x}\nAnswer:")
def tweet_hashtag_count(n, rng, t):
    groups: dict[str, list[str]] = {}
    for tw in tweets("library"):
        k = len(HASHTAG.findall(clip(tw.text, 200)))
        if k <= 3:
            groups.setdefault(str(k), []).append(tw.text)
    return [render(t, {"x": clip(x, 200)}, k, rng, x) for k, x in _pick(groups, n, rng)]


# text rules -----------------------------------------------------------------------------------
def _w(lo=2, hi=6):
    return lambda rng: rules.words(rng, lo, hi)


def _text_task(name, skill, fmt, description, templates, fn, lo=2, hi=6):
    def draw(rng):
        w = rules.words(rng, lo, hi)
        return {"x": " ".join(w)}, fn(w)

    task(name, "text", fmt, skill, description, *templates)(
        lambda n, rng, t: _repeat(n, rng, t, draw))


_text_task("uppercase", "case", "transformation", "The words in capital letters.",
           ("Uppercase: {x}\nOutput:", "Write in capitals: {x}\nAnswer:",
            "{x}\nThe same words in upper case:"), lambda w: " ".join(w).upper())
_text_task("title_case", "case", "transformation", "Each word capitalised (Title Case).",
           ("Title case: {x}\nOutput:", "Capitalise each word: {x}\nAnswer:",
            "{x}\nWith initial capitals:"), lambda w: " ".join(x.capitalize() for x in w))
_text_task("reverse_words", "order", "transformation", "The words in reverse order.",
           ("Reverse the words: {x}\nOutput:", "Write the words backwards: {x}\nAnswer:",
            "{x}\nIn reverse order:"), lambda w: " ".join(w[::-1]))
_text_task("word_sorting", "order", "transformation",
           "The words sorted alphabetically (BIG-Bench Hard's word sorting).",
           ("Sort the words alphabetically: {x}\nOutput:", "Alphabetical order: {x}\nAnswer:",
            "List: {x}\nSorted:"), lambda w: " ".join(sorted(w)), 3, 6)
_text_task("last_word", "position", "extraction", "The last word of a list.",
           ("Last word of: {x}\nOutput:", "{x}\nWhat is the final word?",
            "Words: {x}\nLast one:"), lambda w: w[-1])
_text_task("first_word", "position", "extraction", "The first word of a list.",
           ("First word of: {x}\nOutput:", "{x}\nWhat is the opening word?",
            "Words: {x}\nFirst one:"), lambda w: w[0])
_text_task("initials", "letters", "transformation", "The first letter of each word.",
           ("Initials of: {x}\nOutput:", "First letter of each word: {x}\nAnswer:",
            "{x}\nInitials:"), lambda w: " ".join(x[0] for x in w))
_text_task("count_words", "count", "arithmetic", "How many words a list has.",
           ("Count the words: {x}\nOutput:", "{x}\nHow many words?",
            "Words: {x}\nNumber of words:"), lambda w: str(len(w)), 1, 9)
_text_task("word_length", "letters", "arithmetic", "How many letters a word has.",
           ("How many letters in {x}?", "Word: {x}\nLength:", "Count the letters of {x}:"),
           lambda w: str(len(w[0])), 1, 1)


@task("contains_word", "text", "yesno", "membership",
      "Whether a list of words contains a given word.",
      "Words: {x}\nDoes the list contain {w}? Answer yes or no:",
      "{x}\nIs {w} in the list? yes or no:",
      "Check whether {w} appears.\n{x}\nAnswer:")
def contains_word(n, rng, t):
    def draw(rng):
        w = rules.words(rng, 2, 6)
        yes = rng.random() < 0.5
        probe = rng.choice(w) if yes else rng.choice([x for x in rules.WORDS if x not in w])
        return {"x": " ".join(w), "w": probe}, "yes" if yes else "no"
    return _by_answer(n, rng, t, draw)


# number rules ---------------------------------------------------------------------------------
def _num_task(name, skill, description, templates, draw, fmt="arithmetic"):
    task(name, "number", fmt, skill, description, *templates)(
        lambda n, rng, t: _repeat(n, rng, t, draw))


def _add(rng):
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    return {"a": str(a), "b": str(b), "x": f"{a} {b}"}, str(a + b)


def _sub(rng):
    a = rng.randint(5, 60)
    b = rng.randint(0, a)
    return {"a": str(a), "b": str(b), "x": f"{a} {b}"}, str(a - b)


def _mul(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return {"a": str(a), "b": str(b), "x": f"{a} {b}"}, str(a * b)


def _larger(rng):
    a, b = rng.sample(range(0, 1000), 2)
    return {"a": str(a), "b": str(b), "x": f"{a} {b}"}, str(max(a, b))


def _next(rng):
    start, step = rng.randint(0, 30), rng.randint(1, 9)
    seq = [start + i * step for i in range(4)]
    return {"x": ", ".join(map(str, seq))}, str(start + 4 * step)


_num_task("add_numbers", "addition", "The sum of two numbers.",
          ("Add: {a} + {b}\nOutput:", "What is {a} plus {b}?", "{a} + {b} ="), _add)
_num_task("subtract_numbers", "subtraction", "The difference of two numbers.",
          ("Subtract: {a} - {b}\nOutput:", "What is {a} minus {b}?", "{a} - {b} ="), _sub)
_num_task("multiply_numbers", "multiplication", "The product of two small numbers.",
          ("Multiply: {a} * {b}\nOutput:", "What is {a} times {b}?", "{a} x {b} ="), _mul)
_num_task("larger_number", "comparison", "The larger of two numbers.",
          ("Which is larger, {a} or {b}?", "Larger number: {a}, {b}\nOutput:",
           "{a} or {b}: give the bigger one."), _larger, "extraction")
_num_task("next_in_sequence", "sequence", "The next term of an arithmetic sequence.",
          ("Continue the sequence: {x},", "What comes next? {x}\nAnswer:",
           "Sequence: {x}\nNext number:"), _next)


@task("is_even", "number", "yesno", "parity", "Whether a number is even.",
      "Is {x} an even number? Answer yes or no:", "Number: {x}\nEven? yes or no:",
      "Say yes if {x} is divisible by 2, otherwise no.\nAnswer:")
def is_even(n, rng, t):
    def draw(rng):
        k = rng.randint(0, 999)
        return {"x": str(k)}, "yes" if k % 2 == 0 else "no"
    return _by_answer(n, rng, t, draw)


@task("object_counting", "number", "arithmetic", "counting",
      "How many objects of one kind a sentence lists (BIG-Bench Hard's object counting).",
      "{x} How many {kind} do I have?", "{x}\nQuestion: how many {kind}?\nAnswer:",
      "Count the {kind}. {x}\nAnswer:")
def object_counting(n, rng, t):
    def draw(rng):
        kind, other = rng.sample(["fruits", "animals", "vegetables"], 2)
        text, k = rules.objects(rng, kind, other)
        return {"x": text, "kind": kind}, str(k)
    return _repeat(n, rng, t, draw)


@task("date_add_days", "number", "transformation", "dates",
      "The date a few days after a given date, MM/DD/YYYY (BIG-Bench Hard's date understanding).",
      "Today is {d}. What is the date {k} days from today in MM/DD/YYYY?",
      "Date: {d}\nAdd {k} days. New date (MM/DD/YYYY):",
      "{k} days after {d} it will be (MM/DD/YYYY):")
def date_add_days(n, rng, t):
    def draw(rng):
        d, k = rules.date(rng), rng.randint(1, 20)
        return {"d": rules.fmt_date(d), "k": str(k), "x": rules.fmt_date(d)}, \
            rules.fmt_date(d + dt.timedelta(days=k))
    return _repeat(n, rng, t, draw)


@task("weekday_after", "number", "label", "dates",
      "The weekday a few days after a given weekday.",
      "Today is {d}. What day is it in {k} days?", "{k} days after {d} is a",
      "If it is {d} now, which weekday comes {k} days later?\nAnswer:")
def weekday_after(n, rng, t):
    def draw(rng):
        i, k = rng.randrange(7), rng.randint(1, 10)
        return {"d": rules.WEEKDAYS[i], "k": str(k), "x": f"{i} {k}"}, rules.WEEKDAYS[(i + k) % 7]
    return _by_answer(n, rng, t, draw)


# logic rules ----------------------------------------------------------------------------------
@task("boolean_expressions", "logic", "label", "boolean",
      "The value of a boolean expression with and, or, not (BIG-Bench Hard).",
      "{x} is", "Evaluate: {x}\nAnswer (True or False):", "What is the value of {x}?")
def boolean_expressions(n, rng, t):
    def draw(rng):
        e, v = rules.bool_expr(rng, ("and", "or"))
        return {"x": e}, str(v)
    return _by_answer(n, rng, t, draw)


@task("navigation", "logic", "yesno", "navigation",
      "Whether always-forward-facing step instructions return to the start (BIG-Bench Hard).",
      "If you follow these instructions, do you return to the starting point? Always face "
      "forward. {x}\nAnswer yes or no:",
      "Always face forward. {x}\nAre you back where you started? yes or no:",
      "Instructions (facing forward throughout): {x}\nDo you end at the start?")
def navigation(n, rng, t):
    def draw(rng):
        ins, back = rules.navigation(rng, turns=False)
        return {"x": " ".join(ins)}, "yes" if back else "no"
    return _by_answer(n, rng, t, draw)


@task("bracket_balanced", "logic", "yesno", "brackets",
      "Whether a bracket sequence is balanced.",
      "Is this bracket sequence balanced? {x}\nAnswer yes or no:",
      "Sequence: {x}\nBalanced? yes or no:",
      "Check that every bracket is closed in order: {x}\nAnswer:")
def bracket_balanced(n, rng, t):
    def draw(rng):
        s = rules.brackets(rng, rng.randint(2, 5))
        if rng.random() < 0.5:
            s = rules.unbalance(s, rng)
        return {"x": s}, "yes" if rules.is_balanced(s) else "no"
    return _by_answer(n, rng, t, draw)


@task("dyck_completion", "logic", "transformation", "brackets",
      "The closing brackets that complete a sequence (BIG-Bench Hard's Dyck languages).",
      "Complete the sequence so the brackets are closed properly: {x}\nOutput:",
      "Input: {x}\nClosing brackets:", "Finish the bracket sequence: {x}\nAnswer:")
def dyck_completion(n, rng, t):
    def draw(rng):
        prefix, rest = rules.dyck_prefix(rng, rng.randint(2, 5))
        return {"x": prefix}, rest
    return _repeat(n, rng, t, draw)


@task("logic_mc", "logic", "multiple-choice", "boolean",
      "Which of several boolean expressions is True, as a lettered choice.",
      "Which expression is True?\n{options}\nAnswer:",
      "Exactly one of these evaluates to True.\n{options}\nAnswer with the letter:",
      "Pick the true expression.\n{options}\nAnswer:")
def logic_mc(n, rng, t):
    def draw(rng):
        true, false = [], []
        while not true or len(false) < 2:
            e, v = rules.bool_expr(rng, ("and", "or"), depth=1)
            (true if v else false).append(e)
        opts, letter = mc(true[0], false[:2], 3, rng)
        return {"options": opts, "x": opts}, letter
    return _by_answer(n, rng, t, draw)
