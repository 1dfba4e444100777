"""The token layout: one id space for text, speech codes and special tokens.

```
[0, text_vocab_size)                      text tokens (the text tokenizer's ids, unchanged)
[speech_offset, +num_speech_codes)        speech codes of the speech tokenizer
[special_offset, +len(special_tokens))    [ASR] [TTS] [SOS] [EOS] [SOT] [EOT] <silent_text> ...
padding up to a multiple of `pad_multiple` rows that no token uses (sliced off on export)
```

The text range keeps the text model's ids (for Qwen2 the checkpoint's whole 151,936-row
embedding), so imported weights keep their meaning. The layout is data: it is written next to
every dataset, checkpoint and export, and whatever reads tokens checks that the layout matches;
a mismatch is an error, never a silent reinterpretation of ids.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from etils import epath

SPECIAL_TOKENS: tuple[str, ...] = (
    "[ASR]", "[TTS]", "[SOS]", "[EOS]", "[SOT]", "[EOT]",
    "<silent_text>", "<silent_speech>", "<user>", "<assistant>", "<pad>",
)
LAYOUT_FILENAME = "token_layout.json"

# The text tokenizers a layout may name, with the ids each needs (`tokens.text_tokenizers`
# loads them by these names).
TEXT_TOKENIZER_VOCAB: dict[str, int] = {"bytes": 256, "qwen2": 151_646}


class LayoutMismatchError(ValueError):
    """Tokens, checkpoints or exports were made with another token layout."""


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    text_tokenizer: str  # "qwen2" or "bytes": which tokenizer produced the text ids
    text_vocab_size: int
    num_speech_codes: int
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    pad_multiple: int = 128

    def __post_init__(self):
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        if self.text_tokenizer not in TEXT_TOKENIZER_VOCAB:
            raise ValueError(f"unknown text tokenizer {self.text_tokenizer!r}; "
                             f"choose one of {sorted(TEXT_TOKENIZER_VOCAB)}")
        needed = TEXT_TOKENIZER_VOCAB[self.text_tokenizer]
        if self.text_vocab_size < needed:
            raise ValueError(f"text_vocab_size={self.text_vocab_size} is smaller than the "
                             f"{self.text_tokenizer!r} tokenizer's {needed} ids")
        if self.num_speech_codes < 1:
            raise ValueError(f"num_speech_codes must be >= 1, got {self.num_speech_codes}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special tokens repeat: {self.special_tokens}")
        missing = set(SPECIAL_TOKENS) - set(self.special_tokens)
        if missing:
            raise ValueError(f"special tokens {sorted(missing)} are required")

    # --- ranges ---------------------------------------------------------------------------
    @property
    def speech_offset(self) -> int:
        return self.text_vocab_size

    @property
    def special_offset(self) -> int:
        return self.speech_offset + self.num_speech_codes

    @property
    def used_size(self) -> int:
        """Ids that some token uses: the rows kept on export."""
        return self.special_offset + len(self.special_tokens)

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding and output layer (padded for efficient sharding)."""
        return -(-self.used_size // self.pad_multiple) * self.pad_multiple

    def special(self, name: str) -> int:
        try:
            return self.special_offset + self.special_tokens.index(name)
        except ValueError:
            raise KeyError(f"no special token {name!r}; known: {self.special_tokens}") from None

    def speech_ids(self, codes: np.ndarray) -> np.ndarray:
        """Speech tokenizer codes -> token ids (checked to lie in the speech range)."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_speech_codes):
            raise ValueError(f"speech codes must lie in [0, {self.num_speech_codes}), got "
                             f"[{codes.min()}, {codes.max()}]")
        return (codes + self.speech_offset).astype(np.int32)

    def speech_codes(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> speech codes; ids outside the speech range are an error."""
        ids = np.asarray(ids)
        if ids.size and not self.is_speech(ids).all():
            bad = ids[~self.is_speech(ids)]
            raise ValueError(f"ids {bad[:8].tolist()} are not speech ids of this layout")
        return (ids - self.speech_offset).astype(np.int32)

    def id_mask(self, *, text: bool = False, speech: bool = False,
                specials: tuple[str, ...] = ()) -> np.ndarray:
        """Boolean ``[vocab_size]``: the text range, the speech range and the named special
        tokens, as asked. Every legal-id mask a decoder uses is built here."""
        mask = np.zeros(self.vocab_size, bool)
        mask[:self.text_vocab_size] = text
        mask[self.speech_offset:self.special_offset] = speech
        for name in specials:
            mask[self.special(name)] = True
        return mask

    def is_text(self, ids):
        return ids < self.text_vocab_size

    def is_speech(self, ids):
        return (ids >= self.speech_offset) & (ids < self.special_offset)

    # --- serialisation and checks ---------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["special_tokens"] = list(self.special_tokens)
        d["vocab_size"] = self.vocab_size  # informative; recomputed on load
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        d = {k: v for k, v in d.items() if k != "vocab_size"}
        return cls(**d)

    def save(self, directory: str | os.PathLike) -> str:
        path = os.path.join(directory, LAYOUT_FILENAME)
        epath.Path(path).write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenLayout":
        """Reads a layout JSON file, or the `token_layout.json` inside a folder."""
        path = epath.Path(path)
        if path.is_dir():
            path = path / LAYOUT_FILENAME
        return cls.from_dict(json.loads(path.read_text()))

    def check_matches(self, other: "TokenLayout", *, ours: str, theirs: str) -> None:
        """Raises LayoutMismatchError naming both sources and every differing field."""
        if self == other:
            return
        diffs = [f"{f.name}: {getattr(self, f.name)!r} ({ours}) vs {getattr(other, f.name)!r} "
                 f"({theirs})" for f in dataclasses.fields(self)
                 if getattr(self, f.name) != getattr(other, f.name)]
        raise LayoutMismatchError(
            f"token layout of {theirs} differs from {ours}: " + "; ".join(diffs)
            + ". Ids would mean different tokens; rebuild the data or convert the checkpoint "
            "with the same layout.")
