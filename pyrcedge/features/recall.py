"""Recall: bring back the evicted parts of the history that a new prompt asks about.

pyrcedge keeps the whole history as token ids (4 bytes a token), so nothing said is lost when
its K and V are evicted: it can be read again. When a new prompt arrives (a chat turn, a
completion), the history is cut into sentences, those with evicted tokens are ranked by the
words they share with the prompt (BM25, with each word weighted by how rare it is in the
history), and the evicted tokens of the best are decoded again, up to a bound of tokens per
prompt, in place of the cells the policy values least, at the positions they had (llama.cpp
only appends to a sequence, so they are decoded after the cached cells and their keys shifted
back into place: see BudgetedKV.reinsert). They are held (not evictable) while that prompt is read and answered;
the question probe, when the prompt is long, then weighs them as it weighs every cached cell.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import BudgetError

# words that say nothing about what a prompt asks for: function words and chat roles
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves please tell say said ask asked
answer question remember told user assistant system one also like know
""".split())
WORD = re.compile(r"[^\W_]+", re.UNICODE)
# characters that end a sentence: a token holding one ends its sentence
SENTENCE_ENDS = frozenset(".?!\n")
# where recall's room comes from (Recall.room)
ROOMS = ("recalled", "policy")


@dataclass(frozen=True)
class Recall:
    """How a new prompt brings evicted history back.

    max_tokens: at most this many tokens are read again per prompt (and at most `share` of
        the budget).
    share: at most this share of the budget (in cells, floored) is read again per prompt
        (0.25: a quarter of it).
    sentence_max: evicted sentences longer than this many tokens are cut into pieces.
    pad: tokens of the evicted run on each side of a chosen sentence that come back with it.
    min_prompt: prompts of fewer tokens (a sampled token, a short continuation) recall nothing.
    min_score: sentences scoring less than this (BM25) are not recalled.
    relative: nor are those scoring less than this share of the best candidate's score: a
        question about one fact recalls that fact's sentence, not the bound's worth of
        sentences that share a word with it (0 recalls down to min_score; 0.5 measured better
        on the chat fact and the needles: docs/recall.md).
    covered: the weight of a prompt's word that the cached history already contains (what the
        cache holds needs less recall; 1 ranks it as any other word). Measured both ways on
        question answering at 25% (docs/recall.md, "Ranking"): 1 held more SQuAD answers whole
        (67 of 100 against 53; F1 +0.011) but lost HotpotQA F1 (-0.026 on 50), both inside the
        noise; 0.25 meets both targets, so it stays.
    min_share: nor are sentences holding less than this share of the prompt's word weight
        (each distinct content word's idf, times `covered` for a word the cache holds): a
        question is about a few words and the sentence it asks about holds many of them, where
        a pasted passage brings many words of its own and the history's sentences that share
        a few of them are not what it asks about (0, the default, turns this off: 0.25 took
        the passage turns that recall from 67% to 4% and every turn from 1.21x to 1.00x recall
        off's, but the fact from 28/28 to 24/28 at 25% of the history: docs/recall.md).
    whole: a chosen sentence is read back whole, its cached tokens read again beside its
        evicted ones (they count in the bound), so that its words are encoded beside each
        other; False reads back its evicted tokens alone, each run after the previous one
        (a lone "us" of "Rufus" read after "is" answered "My dog is called Ruf").
    room: where the cells for what is read back come from: "recalled" takes them first from
        what earlier prompts recalled (now released), chosen among them by the policy, so
        that recall turn after turn takes its room from its own earlier reads rather than
        from the history it pushes out; "policy" lets the policy choose among all cells.
    hold_asked: with room "recalled", hold for the prompt, within the bound, the sentences
        earlier prompts read back that the cache holds whole and the prompt would recall were
        they evicted, so that its recall's room does not take them (off: traced, it kept a
        chat's fact that the room took, but the 30-chat hit rate with it is not measured yet;
        docs/recall.md, "Room").
    """

    max_tokens: int = 96
    share: float = 0.25
    sentence_max: int = 40
    pad: int = 2
    min_prompt: int = 4
    min_score: float = 1.0
    relative: float = 0.5
    covered: float = 0.25
    min_share: float = 0.0
    whole: bool = True
    room: Literal["recalled", "policy"] = "recalled"
    hold_asked: bool = False

    def __post_init__(self) -> None:
        for name, least in (("max_tokens", 1), ("sentence_max", 1), ("pad", 0), ("min_prompt", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise BudgetError(f"recall {name} must be an integer >= {least}, got {v!r}")
        if not math.isfinite(float(self.min_score)) or self.min_score < 0:
            raise BudgetError(f"recall min_score must be a number >= 0, got {self.min_score!r}")
        if (isinstance(self.share, bool) or not isinstance(self.share, (int, float))
                or not 0.0 < float(self.share) <= 1.0):
            raise BudgetError(f"recall share must be a number in (0, 1], got {self.share!r}")
        for name in ("relative", "min_share"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise BudgetError(f"recall {name} must be in [0, 1], got {v!r}")
        for name in ("whole", "hold_asked"):
            if not isinstance(getattr(self, name), bool):
                raise BudgetError(f"recall {name} must be True or False, got "
                                  f"{getattr(self, name)!r}")
        if self.room not in ROOMS:
            raise BudgetError(f"recall room must be one of {ROOMS}, got {self.room!r}")


RecallLike = Recall | bool | int | None


def make_recall(spec: RecallLike) -> Recall | None:
    """A Recall from what pyrcedge.Llama(recall=...) takes: None or False (off), True (the
    default settings), an int (a bound of tokens per prompt), or a Recall."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return Recall()
    if isinstance(spec, Recall):
        return spec
    if isinstance(spec, int):
        return Recall(max_tokens=spec)
    raise BudgetError(f"recall must be None, True, False, a number of tokens or a "
                      f"pyrcedge.Recall, got {spec!r}")


def content_words(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS]


def sentences(ends: npt.NDArray[np.bool_], longest: int) -> list[tuple[int, int]]:
    """(start, end) history ranges of the history's sentences (`ends[i]`: token i ends one),
    longer ones cut into pieces of at most `longest` tokens."""
    out: list[tuple[int, int]] = []
    start = 0
    # sentence by sentence, not token by token: recall cuts the whole history every prompt
    for end in [int(i) + 1 for i in np.flatnonzero(ends)] + [len(ends)]:
        out += [(a, min(a + longest, end)) for a in range(start, end, longest)]
        start = end
    return out


def evicted_sentences(ends: npt.NDArray[np.bool_], cached: npt.NDArray[np.int64],
                      longest: int) -> list[tuple[int, int]]:
    """The sentences (as `sentences` cuts them) of which some token is evicted: the
    candidates. A sentence is ranked whole, by all its words, so that one the eviction cut in
    two (the digits of a number gone, its words kept) is found by the words it kept."""
    held = counted_before(len(ends), cached)
    return [(a, b) for a, b in sentences(ends, longest) if held[b] - held[a] < b - a]


def counted_before(n: int, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """[n + 1]: how many of `indices` (history indices, those from n on left out) lie before
    each index 0..n."""
    flags = np.zeros(n, np.int64)
    flags[indices[indices < n]] = 1
    return np.concatenate([[0], np.cumsum(flags)])


def read_back_sentences(ends: npt.NDArray[np.bool_], cached: npt.NDArray[np.int64],
                        read_back: npt.NDArray[np.int64], longest: int) -> list[tuple[int, int]]:
    """The sentences (as `sentences` cuts them) that the cache holds whole and of which recall
    read some token back: what recall's room takes first (Recall.room)."""
    held, again = counted_before(len(ends), cached), counted_before(len(ends), read_back)
    return [(a, b) for a, b in sentences(ends, longest)
            if held[b] - held[a] == b - a and again[b] > again[a]]


def asked_again(candidates: Sequence[Sequence[str]], cached: Sequence[Sequence[str]],
                query: Sequence[str], in_cache: set[str], settings: Recall
                ) -> npt.NDArray[np.int64]:
    """The `cached` sentences (read back earlier, held whole by the cache) that the query asks
    about, best first: those it would recall, were they evicted, beside the evicted candidates
    (ranked as rank ranks them, their own words not counted as cached, over choose's bar:
    min_score and `relative` of the best)."""
    if not cached:
        return np.zeros(0, np.int64)
    own = set().union(*map(set, cached))
    scores = rank(list(candidates) + list(cached), query, in_cache - own, settings)
    finite = scores[np.isfinite(scores)]
    if len(finite) == 0:
        return np.zeros(0, np.int64)
    least = max(settings.min_score, settings.relative * float(finite.max()))
    mine = scores[len(candidates):]
    return np.asarray([j for j in np.argsort(-mine, kind="stable") if mine[j] >= least], np.int64)


def idf(docs: Sequence[Sequence[str]], words: set[str]) -> dict[str, float]:
    """BM25's inverse document frequency of each word among the documents."""
    n = len(docs)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(words.intersection(d))
    return {w: math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) for w in words}


def bm25(docs: Sequence[Sequence[str]], query: Sequence[str], k1: float = 1.2,
         b: float = 0.75, weight: dict[str, float] | None = None) -> npt.NDArray[np.float64]:
    """Okapi BM25 of each document (a list of words) for the query's words, each word's term
    multiplied by weight[word] (default 1)."""
    if not docs:
        return np.zeros(0)
    n = len(docs)
    avg = max(1e-9, sum(len(d) for d in docs) / n)
    terms = set(query)
    rare = idf(docs, terms)
    out = np.zeros(n)
    for j, d in enumerate(docs):
        tf = Counter(w for w in d if w in terms)
        for w, f in tf.items():
            w_ = 1.0 if weight is None else weight.get(w, 1.0)
            out[j] += w_ * rare[w] * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
    return out


def shares(docs: Sequence[Sequence[str]], query: Sequence[str],
           weight: dict[str, float] | None = None) -> npt.NDArray[np.float64]:
    """The share of the query's word weight that each document holds: each distinct query
    word weighs its idf, times weight[word] (default 1) unless the document holds the word.
    A query word that no document holds weighs the most (what the prompt brings that the
    history never said); a word the cache holds weighs less, but not in a document holding it
    (a sentence whose name was evicted and whose other words are still cached is found by
    them)."""
    terms = set(query)
    if not docs or not terms:
        return np.zeros(len(docs))
    rare = idf(docs, terms)
    w = weight or {}
    total = sum(rare[t] * w.get(t, 1.0) for t in terms)
    out = np.zeros(len(docs))
    for j, d in enumerate(docs):
        held = terms.intersection(d)
        mass = sum(rare[t] for t in held)
        whole = total + sum(rare[t] * (1.0 - w.get(t, 1.0)) for t in held)
        out[j] = mass / whole if whole > 0 else 0.0
    return out


def rank(docs: Sequence[Sequence[str]], query: Sequence[str], in_cache: set[str],
         settings: Recall) -> npt.NDArray[np.float64]:
    """Each candidate's score for a prompt's words: BM25, a word the cache holds weighing
    `covered`; -inf (never recalled) for a candidate holding less than `min_share` of the
    prompt's word weight."""
    weight = {w: settings.covered for w in in_cache}
    scores = bm25(docs, query, weight=weight)
    if settings.min_share > 0:
        scores[shares(docs, query, weight) < settings.min_share] = -np.inf
    return scores


def choose(spans: Sequence[tuple[int, int]], scores: npt.NDArray[np.float64],
           settings: Recall, bound: int, evicted: Callable[[int], bool],
           rereadable: Callable[[int], bool] | None = None) -> list[tuple[int, int]]:
    """The evicted tokens of the best-scoring spans, each span widened by up to `pad` evicted
    tokens on each side, while they fit in `bound` tokens: runs of history indices, in
    order. A span scored -inf is never taken. rereadable: the cached tokens that are read
    again with their span's evicted ones (Recall.whole)."""
    def taken(i: int) -> bool:
        return evicted(i) or (rereadable is not None and rereadable(i))

    picked: set[int] = set()
    if len(scores) == 0 or not np.isfinite(scores).any():
        return []
    least = max(settings.min_score, settings.relative * float(scores[np.isfinite(scores)].max()))
    for j in np.argsort(-scores, kind="stable"):
        if not scores[j] >= least:      # below the bar, or -inf
            break
        a, b = spans[j]
        for _ in range(settings.pad):
            if a > 0 and evicted(a - 1):
                a -= 1
            if evicted(b):
                b += 1
        new = [i for i in range(a, b) if i not in picked and taken(i)]
        if len(picked) + len(new) <= bound:
            picked.update(new)
    runs: list[tuple[int, int]] = []
    for i in sorted(picked):
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
