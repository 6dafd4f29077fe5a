"""Text statistics: counts, reading time, keyword scoring and the most frequent words."""

import re
from collections import Counter

from weft_plugin import ArgumentError, call, command, log

_WORD = re.compile(r"[\w']+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
WORDS_PER_MINUTE = 230


def _words(text: str) -> list[str]:
    return [w.lower().strip("'") for w in _WORD.findall(text) if w.strip("'")]


@command(resources=["text"], version="1.0.0")
def summary(text: str) -> dict:
    """Characters, words, sentences, average word length and reading time of a text."""
    if not isinstance(text, str):
        raise ArgumentError("text must be a string")
    words = _words(text)
    sentences = len(_SENTENCE_END.findall(text)) or (1 if words else 0)
    return {
        "characters": len(text),
        "words": len(words),
        "unique_words": len(set(words)),
        "sentences": sentences,
        "average_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0.0,
        "reading_time_s": round(len(words) * 60 / WORDS_PER_MINUTE, 1),
    }


@command(resources=["text"], version="1.0.0")
def top_words(counts: dict, n: int = 3) -> list:
    """The n most frequent words of a word count (`text.word_count`'s result, or its `counts`)."""
    if isinstance(counts, dict) and isinstance(counts.get("counts"), dict):
        counts = counts["counts"]
    if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
        raise ArgumentError("counts must map words to whole numbers")
    if n < 0:
        raise ArgumentError("n must not be negative")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"word": word, "count": count} for word, count in ranked]


@command(resources=["text"], version="1.0.0")
def score(text: str, keywords: dict) -> dict:
    """Score a text by weighted keywords: the sum of weight × occurrences, and the hits."""
    counts = Counter(_words(text))
    hits = {k: counts[k.lower()] for k in keywords if counts[k.lower()]}
    total = sum(float(keywords[k]) * c for k, c in hits.items())
    return {"score": round(total, 3), "hits": hits}


@command(resources=["text"], version="1.0.0")
def shout_words(text: str) -> list:
    """Each distinct word upper-cased by the `text.upper` command, wherever it runs."""
    distinct = list(dict.fromkeys(_words(text)))
    log.debug(f"upper-casing {len(distinct)} words")
    return [call("text.upper", word) for word in distinct]
