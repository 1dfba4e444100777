"""Transcript normalisation: the one rule that data building and scoring both apply.

Unicode NFKC, lowercase, every character that is not a letter, digit, apostrophe or
whitespace replaced by a space, whitespace collapsed. Speech carries neither case nor
punctuation, so training targets and error rates both ignore them.
"""

from __future__ import annotations

import re
import unicodedata

_DROP = re.compile(r"[^\w\s']|_")


def normalize_transcript(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_DROP.sub(" ", text).split())
