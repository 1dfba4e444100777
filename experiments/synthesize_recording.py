"""A user recording to try the duplex command on, spoken by eSpeak NG.

    python experiments/synthesize_recording.py --out=user.ogg
    python experiments/duplex.py --checkpoint=workdir/duplex_3/checkpoints \\
        --input=user.ogg --out_dir=out/

Each sentence is followed by a pause (the assistant's chance to answer); the file is written
in the format its extension names (wav, flac, ogg), at `--sample_rate`, in stereo, with a
little noise: not the form the model was trained on, as a real recording would not be. The
default voice `en+m7` is one no simulated user speaks with.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", "user.ogg", "the file to write")
    flags.DEFINE_list("sentences", ["hello there", "what is your favourite book",
                                    "tell me a joke about computers please"], "what the user says")
    flags.DEFINE_string("voice", "en+m7", "an eSpeak NG voice")
    flags.DEFINE_integer("rate", 160, "words per minute")
    flags.DEFINE_list("pauses", ["3.0"], "seconds of silence after each sentence (one value: "
                      "the same after every sentence)")
    flags.DEFINE_integer("sample_rate", 48_000, "of the written file")


def main() -> None:
    import numpy as np
    import soundfile

    from data_pipelines.synth.espeak import Synthesizer, Voice
    from omniflatten_jax.speech.audio import resample

    pauses = [float(p) for p in FLAGS.pauses]
    if len(pauses) == 1:
        pauses *= len(FLAGS.sentences)
    if len(pauses) != len(FLAGS.sentences):
        raise ValueError(f"{len(FLAGS.sentences)} sentences but {len(pauses)} pauses")
    synth, rate = Synthesizer(), FLAGS.sample_rate
    parts = [np.zeros(rate // 2, np.float32)]
    for sentence, pause in zip(FLAGS.sentences, pauses):
        utt = synth.speak(sentence, Voice(FLAGS.voice, rate=FLAGS.rate))
        parts += [resample(utt.audio, utt.sample_rate, rate),
                  np.zeros(int(pause * rate), np.float32)]
    wave = np.concatenate(parts)
    wave += np.random.default_rng(0).normal(0, 0.003, len(wave)).astype(np.float32)
    soundfile.write(FLAGS.out, np.stack([wave, 0.8 * wave], axis=1), rate)
    print(f"wrote {FLAGS.out}: {len(wave) / rate:.2f} s, {rate} Hz, stereo")


if __name__ == "__main__":
    cli.run(main, define_flags)
