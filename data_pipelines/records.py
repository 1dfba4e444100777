"""The dialogue record: the fields the dialogue builder writes, and the one reading of them.

One record per simulated dialogue (`builders.dialogues`), per frame of the speech tokenizer:

* ``user_speech``, ``assistant_speech``: each channel's speech ids (assistant silence is
  ``<silent_speech>``); ``user_audio``, ``assistant_audio``: int16 audio (held-out splits);
* ``turn_roles`` (indices into `ROLES`), ``turn_starts``, ``turn_ends`` (frames),
  ``turn_text_lengths`` with the concatenated ``text_ids`` and each text token's
  ``token_frames`` (the frame its word starts);
* ``boundaries``: each turn change's pattern, comma-separated (``reply``, ``interrupt``,
  ``wait``);
* ``event_kinds`` (indices into `EVENT_KINDS`), ``event_starts``, ``event_ends``: pauses and
  backchannels, which are not turns;
* ``id``, ``snr_db``.

Training (`dialogue_examples`), the FDB samples, turn-taking evaluation and the diagnosis read
records only through the functions below.
"""

from __future__ import annotations

import numpy as np

from omniflatten_jax.tokens.dialogue_chunks import DialogueStreams, Turn

ROLES = ("user", "assistant")
EVENT_KINDS = ("pause", "user_backchannel", "assistant_backchannel")
INT_FIELDS = ("user_speech", "assistant_speech", "turn_roles", "turn_starts", "turn_ends",
              "turn_text_lengths", "text_ids", "token_frames", "event_kinds", "event_starts",
              "event_ends")
AUDIO_FIELDS = ("user_audio", "assistant_audio")  # int16
TEXT_FIELDS = ("id", "boundaries")


def dialogue_streams(record) -> DialogueStreams:
    """A record -> the `DialogueStreams` that `tokens.chunk_layout` lays out."""
    bounds = np.concatenate([[0], np.cumsum(record["turn_text_lengths"])])
    turns = []
    for i, role in enumerate(record["turn_roles"]):
        ids = record["text_ids"][bounds[i]:bounds[i + 1]]
        frames = record["token_frames"][bounds[i]:bounds[i + 1]]
        turns.append(Turn(ROLES[int(role)], int(record["turn_starts"][i]),
                          int(record["turn_ends"][i]), ids,
                          None if ROLES[int(role)] == "assistant" else frames))
    return DialogueStreams(record["user_speech"], record["assistant_speech"], tuple(turns))


def turn_changes(record) -> list[str]:
    """The pattern of each turn change of a record: ``reply``, ``interrupt`` or ``wait``."""
    boundaries = record["boundaries"]  # TFDS text: bytes
    boundaries = boundaries.decode() if isinstance(boundaries, bytes) else str(boundaries)
    return boundaries.split(",") if boundaries else []


def spans(record) -> list[tuple[str, int, int]]:
    """``(kind, first frame, end frame)`` of a record's pauses and backchannels."""
    kinds = [EVENT_KINDS[int(k)] for k in record.get("event_kinds", ())]
    return [(k, int(s), int(e)) for k, s, e in zip(kinds, record.get("event_starts", ()),
                                                   record.get("event_ends", ()))]
