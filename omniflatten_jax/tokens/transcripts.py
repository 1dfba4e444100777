"""Transcript normalisation: the one rule that data building and scoring both apply.

First `clean_transcript`: terminal escapes (``'\\x1b[31m'``, as a transcript pasted from a
coloured terminal holds) are removed and control characters become spaces, whatever else is
asked: neither is speech, and "\\x1b[31mhello" would train as "31mhello". Then, where text is
normalised: Unicode NFKC, lowercase, every character that is not a letter, digit, apostrophe
or whitespace replaced by a space, whitespace collapsed. Speech carries neither case nor
punctuation, so training targets and error rates both ignore them.

`foreign_script` tells a transcript written in another script than its language's (Chinese
text beside an English recording): the data builders reject it.
"""

from __future__ import annotations

import collections
import re
import unicodedata

_DROP = re.compile(r"[^\w\s']|_")
# ECMA-48 escapes: CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), and the
# two-character ones (ESC and one byte in @-_).
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])")

# The scripts each language's transcripts are written in, by the first word of Unicode's
# character names ("LATIN SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-4E2D"). A language not
# listed is not checked.
SCRIPTS = {
    **{lang: ("LATIN",) for lang in ("en", "fr", "de", "es", "it", "pt", "nl", "pl", "sv",
                                      "tr", "vi", "id")},
    "ru": ("CYRILLIC",), "uk": ("CYRILLIC",), "el": ("GREEK",), "ar": ("ARABIC",),
    "he": ("HEBREW",), "hi": ("DEVANAGARI",), "th": ("THAI",), "ko": ("HANGUL",),
    "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"),
}
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI")
MIN_WORDS_CHECKED = 3


def clean_transcript(text: str) -> str:
    """`text` without terminal escapes, its control characters as spaces, stripped."""
    text = _ESCAPE.sub("", text)
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text).strip()


def normalize_transcript(text: str) -> str:
    text = unicodedata.normalize("NFKC", clean_transcript(text)).lower()
    return " ".join(_DROP.sub(" ", text).split())


def foreign_script(text: str, language: str) -> str | None:
    """The script (as `scripts_of` names it) most of `text`'s words are written in, where
    fewer than half of them are in a script of `language` (`SCRIPTS`); None where they are,
    where the text has fewer than
    `MIN_WORDS_CHECKED` words (a name or a loanword alone: "Python" in a Chinese dialogue),
    or where the language is not listed. A word is a run of letters of one script, or one
    character of a script written without spaces (Chinese, Japanese, Thai), so "我用iPhone"
    is two Chinese words and one Latin."""
    expected = SCRIPTS.get(language)
    if expected is None:
        return None
    words: collections.Counter = collections.Counter()
    previous = None
    for c in unicodedata.normalize("NFKC", text):
        script = unicodedata.name(c, "?").split(" ")[0] if c.isalpha() else None
        if script is not None and (script != previous or script in _UNSPACED):
            words[script] += 1
        previous = script
    total = sum(words.values())
    if total < MIN_WORDS_CHECKED or 2 * sum(words[s] for s in expected) >= total:
        return None
    return _title(words.most_common(1)[0][0])


def wrong_script(text: str, language: str, setting: str) -> str | None:
    """Where `foreign_script` finds one, what the data builders say of it: "'...' is written
    in CJK script, not in that of data.language='en' (Latin)"; else None."""
    script = foreign_script(text, language)
    if script is None:
        return None
    return (f"{text[:40]!r} is written in {script} script, not in that of {setting}="
            f"{language!r} ({scripts_of(language)})")


def scripts_of(language: str) -> str:
    """`language`'s scripts as messages name them ("Latin", "CJK, Hiragana, Katakana")."""
    return ", ".join(_title(s) for s in SCRIPTS.get(language, ()))


def _title(script: str) -> str:
    return script if script == "CJK" else script.title()
