"""A duplex model ready to decode: what a duplex stage's checkpoint says, read once.

Chunk-synchronous full-duplex decoding runs the model as it would run live. Per chunk: the
user's speech chunk is fed as heard (teacher-forced); then every other position of the chunk
(user text in duplex_4, assistant text, assistant speech) is generated token by token from the
KV cache, each under the mask of the ids legal for its stream:

* text positions: text ids, <silent_text>, [EOT] (and [SOT] when turns carry it);
* speech positions: speech ids and <silent_speech>.

How each stream is drawn, and how the model's speak/listen decision is read, is the stage's
`DecodingPolicy` (stored in its checkpoint; `DuplexSettings.policy`): a threshold on the
probability of leaving silence, then greedy or seeded temperature / top-k content per stream.

`load_duplex` reads a checkpoint once into a `DuplexModel` (placed weights, settings, speech
tokenizer): the duplex command, the FDB harness, the benchmarks and the live session all start
from it. Decoding itself is `inference.session.DuplexSession`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from omniflatten_jax.checkpoint import CheckpointMeta
from omniflatten_jax.config import DecodingPolicy, FlattenConfig, MeshConfig, ParamPlacement
from omniflatten_jax.config.stages import CHUNKED_STAGES
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.model.placement import PlacedModel
from omniflatten_jax.speech.tokenizer import SpeechTokenizer
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.tokens.chunk_layout import ChunkLayout, chunk_layout
from omniflatten_jax.tokens.sequence import Stream


def legal_ids(layout: TokenLayout, stream: Stream, cfg: FlattenConfig) -> np.ndarray:
    """Boolean ``[vocab]``: the ids a position of `stream` may hold."""
    if stream in (Stream.USER_TEXT, Stream.ASSISTANT_TEXT):
        markers = ("[EOT]",) * cfg.text_end_marker + ("[SOT]",) * cfg.text_start_marker
        return layout.id_mask(text=True, specials=("<silent_text>",) + markers)
    if stream in (Stream.USER_SPEECH, Stream.ASSISTANT_SPEECH):
        return layout.id_mask(speech=True, specials=("<silent_speech>",))
    raise ValueError(f"nothing is generated on stream {stream.key}")


def chunk_masks(layout: TokenLayout, chunk: ChunkLayout,
                cfg: FlattenConfig) -> tuple[np.ndarray, np.ndarray]:
    """The engine's masks for one chunk: ``legal [streams generated, vocab]`` and, per
    generated position, the row of `legal` it draws from."""
    generated = chunk.streams[1:]
    legal = np.stack([legal_ids(layout, stream, cfg) for stream, _ in generated])
    pattern = np.repeat(np.arange(len(generated)), [width for _, width in generated])
    return legal, pattern.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DuplexSettings:
    """What decoding a duplex model needs besides its weights: read from its checkpoint."""

    chunk: ChunkLayout
    flatten: FlattenConfig
    context_chunks: int  # the training window (`ChunkLayout.window_chunks`)
    policy: DecodingPolicy = DecodingPolicy()  # the stage's stored one, or the default

    @classmethod
    def of_plan(cls, plan: StagePlan, policy: DecodingPolicy = DecodingPolicy()
                ) -> "DuplexSettings":
        if plan.chunk is None:
            raise ValueError(f"{plan.name} is not a duplex stage")
        return cls(plan.chunk, plan.flatten, plan.context_chunks, policy)

    def with_policy(self, policy: DecodingPolicy) -> "DuplexSettings":
        return dataclasses.replace(self, policy=policy)

    @classmethod
    def of_checkpoint(cls, meta: CheckpointMeta, where: str) -> "DuplexSettings":
        if meta.stage is None:
            raise ValueError(
                f"{where} does not say which stage trained it (a checkpoint written before "
                "checkpoints described themselves, or an import). Add the description with "
                "`python experiments/upgrade_checkpoint.py --checkpoint CKPT --out NEW "
                "--stage STAGE --speech_tokenizer FILE [--settings OLD_INFERENCE_JSON]`, then use "
                "NEW.")
        if meta.stage not in CHUNKED_STAGES or meta.context_chunks is None:
            raise ValueError(f"{where} is a checkpoint of the {meta.stage} stage; the duplex "
                             f"decoder runs a duplex stage: one of {CHUNKED_STAGES}")
        return cls(chunk_layout(meta.stage, meta.flatten), meta.flatten, meta.context_chunks,
                   meta.decoding or DecodingPolicy())


@dataclasses.dataclass(frozen=True)
class DuplexModel:
    """A duplex stage ready to decode: its weights placed, its settings, and (from a
    checkpoint) the speech tokenizer it was trained with and where it was read from."""

    placed: PlacedModel
    layout: TokenLayout
    settings: DuplexSettings
    speech: SpeechTokenizer | None = None
    where: str = ""  # the checkpoint step folder, when it came from one
    stage: str = ""

    @property
    def chunk(self) -> ChunkLayout:
        return self.settings.chunk

    def with_policy(self, policy: DecodingPolicy) -> "DuplexModel":
        return dataclasses.replace(self, settings=self.settings.with_policy(policy))


def load_duplex(checkpoint_path: str, *, placement: ParamPlacement = "sharded",
                mesh: MeshConfig = MeshConfig(), speech_tokenizer: str | None = None,
                layout: TokenLayout | None = None) -> DuplexModel:
    """A duplex stage's checkpoint (its folder, or one step folder in it), read once: the
    description first (which stage, its chunk layout, context window and decoding policy), the
    speech tokenizer it stores (or `speech_tokenizer`, a file with the same number of codes),
    then the weights, restored straight into `placement` on a mesh of `mesh`'s shape. With
    `layout`, the checkpoint's token layout must equal it."""
    from omniflatten_jax import checkpoint
    from omniflatten_jax.checkpoint.placed import restore_placed
    from omniflatten_jax.distributed import paths
    from omniflatten_jax.speech.tokenizer import load_speech_tokenizer

    meta = checkpoint.load_meta(checkpoint_path)
    directory, step = checkpoint.resolve(checkpoint_path)
    where = paths.join(directory, str(step))
    settings = DuplexSettings.of_checkpoint(meta, where)
    speech = (load_speech_tokenizer(speech_tokenizer) if speech_tokenizer
              else checkpoint.load_speech_tokenizer(where))
    if speech.num_codes != meta.layout.num_speech_codes:
        raise ValueError(f"the speech tokenizer has {speech.num_codes} codes but {where} was "
                         f"trained on {meta.layout.num_speech_codes}: give the tokenizer it "
                         "was trained with (or none: the checkpoint's own)")
    placed = restore_placed(where, mesh, placement, layout=layout)
    return DuplexModel(placed, meta.layout, settings, speech, where, meta.stage)
