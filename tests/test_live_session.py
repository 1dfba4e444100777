"""The duplex session in audio: a chunk of each caller's audio in, the assistant's out, no file;
conversations as rows that start and end on their own (`inference.live`)."""

import numpy as np
import pytest

from omniflatten_jax.inference.duplex import load_duplex
from omniflatten_jax.inference.live import LiveSession, TextPieces
from omniflatten_jax.speech.audio import resample
from tests.test_duplex_cli import LAYOUT, stage_dir  # noqa: F401  (the shared fixture)


@pytest.fixture(scope="module")
def speech():
    """About 2 s of synthesised speech, then 1 s of silence, at 16 kHz."""
    from data_pipelines.synth.espeak import Synthesizer, Voice

    utt = Synthesizer().speak("hello there how are you today", Voice("en+m3"))
    return np.concatenate([resample(utt.audio, utt.sample_rate, 16_000),
                           np.zeros(16_000)]).astype(np.float32)


def chunks(wave, n):
    wave = np.pad(wave, (0, -len(wave) % n))
    return [wave[i:i + n] for i in range(0, len(wave), n)]


def test_conversations_stream_in_audio_and_restart_on_their_own(stage_dir, speech):  # noqa: F811
    model = load_duplex(str(stage_dir / "checkpoints"))
    live = LiveSession(model, rows=2)
    live.compile()
    pieces = chunks(speech, live.chunk_samples)
    assert live.chunk_samples == 10 * 640  # 10 frames of 40 ms at 16 kHz
    live.start([0, 1])
    first, second = [], []
    for i, piece in enumerate(pieces):
        if i == 3:  # row 1 hangs up after 3 chunks of other audio and calls again
            live.end(1)
        if i == 4:
            live.start(1)
        audio = {0: piece} | ({1: 0.5 * piece[::-1].copy()} if i < 3 else {})
        if i >= 4:
            audio[1] = pieces[i - 4]
        replies = live.step(audio)
        assert set(replies) == set(audio)
        for reply in replies.values():
            assert reply.audio.shape == (live.chunk_samples,) and np.isfinite(reply.audio).all()
            silent = reply.assistant_ids == LAYOUT.special("<silent_speech>")
            assert reply.speaking == (not silent.all()) and isinstance(reply.text, str)
        first.append(replies[0])
        if i >= 4:
            second.append(replies[1])
    # Silence where the assistant listens: a spoken frame sounds over its analysis window,
    # which the streaming decoder ends `audio_delay` (half a window) after the frame's centre.
    assert live.audio_delay == 512
    audio = np.concatenate([r.audio for r in first])
    sounding = np.zeros(len(audio) + 1024, bool)
    spoken = np.concatenate([r.assistant_ids for r in first]) != LAYOUT.special("<silent_speech>")
    for frame in np.flatnonzero(spoken):
        sounding[frame * 640:frame * 640 + 1024] = True
    assert np.any(audio) and not np.any(audio[~sounding[:len(audio)]])
    # The second call heard the same audio from its start: the same tokens, chunk by chunk,
    # whatever the other row did and whenever it started.
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.user_ids, b.user_ids)
        np.testing.assert_array_equal(a.assistant_ids, b.assistant_ids)
    # Heard live (no lookahead), the user's codes are those of the whole recording but for
    # each chunk's last frame, whose analysis window reaches past the chunk. Where two
    # centroids lie equally near a frame (this tiny codebook has near-duplicates), the float
    # noise of a shorter STFT (1e-6) may pick either: such a frame must be a tie in the whole
    # recording's distances, not a different sound.
    distances = model.speech.distances(np.concatenate(pieces), 16_000)
    whole = distances.argmin(axis=1)
    heard = np.concatenate([r.user_ids for r in first]) - LAYOUT.speech_offset
    inside = np.ones(len(heard), bool)
    inside[9::10] = False
    frames = np.flatnonzero(inside)
    gap = distances[frames, heard[frames]] - distances[frames, whole[frames]]
    assert np.all(gap <= 1e-3), (frames[gap > 1e-3], gap[gap > 1e-3])
    assert np.mean(heard[inside] == whole[inside]) > 0.5  # and most frames are no tie at all
    # A row without a conversation is refused, by name.
    with pytest.raises(ValueError, match=r"rows \[1\] have no conversation"):
        live.end(1)
        live.step({0: pieces[0], 1: pieces[0]})


def test_text_pieces_wait_for_whole_characters():
    pieces = TextPieces(LAYOUT)
    word = list("né".encode())  # "é" is two bytes: two byte tokens
    assert pieces.add(word[:2]) == "n"  # the first half of "é" waits
    assert pieces.add(word[2:] + [LAYOUT.special("<silent_text>")]) == "é"
    assert pieces.add([LAYOUT.special("[EOT]")]) == "\n"


def test_the_live_context_makes_a_chunks_features_those_of_the_whole(stage_dir, speech):  # noqa: F811,E501
    """Why `CONTEXT_SECONDS` exists: the codebook above is coarse enough to hide a wrong
    context, the log-mel features are not. With the live context, every frame of a chunk
    but the last has the whole recording's features; cut off, the first frame does not."""
    from omniflatten_jax.speech.kmeans import log_mel

    live = LiveSession(load_duplex(str(stage_dir / "checkpoints")), rows=1)
    cfg, n = live.tokenizer.cfg, live.chunk_samples
    wave = np.pad(speech, (0, -len(speech) % n))
    whole = log_mel(wave, cfg)
    start = 2 * n  # a chunk in the middle of the words
    heard = log_mel(wave[start - live.context:start + n], cfg)[-live.width:]
    cut_off = log_mel(wave[start:start + n], cfg)
    frames = slice(start // live.hop, start // live.hop + live.width)
    np.testing.assert_allclose(heard[:-1], whole[frames][:-1], atol=1e-4)
    assert np.abs(cut_off[0] - whole[frames][0]).max() > 0.1
