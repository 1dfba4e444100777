import pytest

from omniflatten_jax.evaluation.text_metrics import cer, edit_distance, wer
from omniflatten_jax.tokens.transcripts import normalize_transcript


@pytest.mark.parametrize("ref, hyp, distance", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("abc", "abc", 0), ("abcdef", "azced", 3)])
def test_edit_distance(ref, hyp, distance):
    assert edit_distance(list(ref), list(hyp)) == distance


def test_rates_on_known_answers():
    assert normalize_transcript("Hello, World!  It's  me.") == "hello world it's me"
    assert wer(["the cat sat"], ["the cat sat"]) == 0.0
    assert wer(["the cat sat"], ["the hat"]) == pytest.approx(2 / 3)
    assert cer(["abcd"], ["abxd"]) == pytest.approx(1 / 4)
    assert cer(["ab", "cd"], ["", ""]) == 1.0  # corpus rate: empty output scores 1
    assert cer(["Hi!"], ["hi"]) == 0.0  # punctuation and case do not count
