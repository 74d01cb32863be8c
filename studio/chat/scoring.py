"""Scoring short answers against a reference: SQuAD's exact match and token F1, and which side came closer."""
from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter

# A reference of up to 64 words is an answer one can match word for word (a fact, a name, a short
# sentence); a longer one has many good phrasings, where word overlap says little: only loss is compared.
SHORT_REFERENCE_WORDS = 64
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed (ASCII and Unicode), articles (a, an, the)
    removed, whitespace collapsed."""
    text = "".join(" " if ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P") else ch
                   for ch in (text or "").lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two are the same after normalize_answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1: the harmonic mean of precision and recall of the bag of normalised words (a word
    counts as often as it occurs in both). Two empty answers agree (1.0); one empty answer scores 0.0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_short(reference: str) -> bool:
    """Whether a reference answer is short enough (at most SHORT_REFERENCE_WORDS words) to be scored."""
    return len((reference or "").split()) <= SHORT_REFERENCE_WORDS


def closer(left: str, right: str, left_f1: float, right_f1: float) -> str:
    """The name of the side whose answer has the higher F1, or "tie"."""
    if math.isclose(left_f1, right_f1, abs_tol=1e-12):
        return "tie"
    return left if left_f1 > right_f1 else right


def closeness_summary(left: str, right: str, wins: dict, n: int) -> str:
    """E.g. "tuned closer on 17 of 20 held-out prompts (base 2, tie 1)": the side closer more often first; n is
    the number of rows compared, some of which may have a reference too long to score."""
    short = wins.get(left, 0) + wins.get(right, 0) + wins.get("tie", 0)
    if short == 0:
        return (f"No held-out reference is short enough to score word for word (all {n} are over "
                f"{SHORT_REFERENCE_WORDS} words): compare the losses.")
    lead, other = (right, left) if wins.get(right, 0) >= wins.get(left, 0) else (left, right)
    text = (f"{lead} closer on {wins.get(lead, 0)} of {short} held-out prompts ({other} {wins.get(other, 0)}, "
            f"tie {wins.get('tie', 0)})")
    if short < n:
        text += f"; {n - short} with a reference over {SHORT_REFERENCE_WORDS} words not scored"
    return text + "."
