import numpy as np
import pytest

from omniflatten_jax.config import PRESETS
from omniflatten_jax.config.token_layout import LayoutMismatchError, TokenLayout
from omniflatten_jax.tokens.text_tokenizers import text_tokenizer


def test_qwen2_tokenizer_gives_qwen2_ids():
    tok = text_tokenizer(TokenLayout("qwen2", 151_936, 4096))
    assert tok.encode("Hello, world") == [9707, 11, 1879]
    assert tok.encode("你好，世界") == [108386, 3837, 99489]
    assert tok.decode([108386, 3837, 99489]) == "你好，世界"
    # Control strings inside user text stay text; they never become control ids.
    assert all(i < 151_643 for i in tok.encode("<|endoftext|>"))


def test_byte_tokenizer_round_trips_any_text():
    tok = text_tokenizer(TokenLayout("bytes", 256, 16))
    for text in ("hello", "你好，世界", ""):
        assert tok.decode(tok.encode(text)) == text


def test_qwen_layout_ranges():
    layout = PRESETS["qwen2_0_5b"].layout
    assert layout.speech_offset == 151_936
    assert layout.special_offset == 151_936 + 4096
    assert layout.vocab_size % 128 == 0 and layout.vocab_size >= layout.used_size
    specials = [layout.special(name) for name in layout.special_tokens]
    assert specials == list(range(layout.special_offset, layout.used_size))
    codes = np.array([0, 5, 4095])
    assert np.array_equal(layout.speech_codes(layout.speech_ids(codes)), codes)
    with pytest.raises(ValueError):
        layout.speech_ids(np.array([4096]))
    with pytest.raises(ValueError):
        layout.speech_codes(np.array([5]))  # a text id


def test_layout_json_round_trip_and_mismatch(tmp_path):
    layout = PRESETS["tiny"].layout
    layout.save(tmp_path)
    assert TokenLayout.load(tmp_path) == layout
    other = TokenLayout("bytes", 256, 512)
    with pytest.raises(LayoutMismatchError, match="num_speech_codes: 256 .*vs 512"):
        layout.check_matches(other, ours="the model", theirs="the dataset")


def test_layout_rejects_text_range_smaller_than_tokenizer():
    with pytest.raises(ValueError, match="smaller than"):
        TokenLayout("qwen2", 1000, 16)


def test_every_tokenizer_a_layout_may_name_loads_and_fits_its_vocab_size():
    from omniflatten_jax.config.token_layout import TEXT_TOKENIZER_VOCAB
    from omniflatten_jax.tokens.text_tokenizers import TEXT_TOKENIZERS

    assert set(TEXT_TOKENIZERS) == set(TEXT_TOKENIZER_VOCAB)
    for name, size in TEXT_TOKENIZER_VOCAB.items():
        ids = text_tokenizer(TokenLayout(name, size, 16)).encode("hello 你好")
        assert ids and max(ids) < size
