"""How an entry of a corpus becomes a stored example: the one per-example code of every build.

A builder's context (`speech_text.BuildContext`, `dialogues.DialogueContext`) is a `Recipe`:
its per-example work as named steps (check text, read and check audio, synthesise, tokenise,
lay out), each a function of the entry's state so far. The single-process build runs the
steps one entry after another (`run`); the Beam build runs each step as a transform on many
workers (`data_pipelines.beam_build`). Both go through `apply`, and both count what happened
to each entry in a `Tally` under the same keys, so the two builds cannot disagree on an
example or on a count.

A context that knows the file its speech tokenizer came from travels to Beam workers as that
path (`reduce_with_tokenizer_file`): each worker reads the file, no Python state is shared.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Protocol

from data_pipelines.corpus import SPLITS, BadInputError, InputFileError, stop_error

FIRST_SKIPPED = 50  # skip messages kept in the build report


class Recipe(Protocol):
    steps: tuple[str, ...]  # in order; `step(name, ...)` runs one

    def step(self, name: str, split: str, state: Any) -> Any:
        """The state after step `name`; raises BadInputError(reason, message) to skip."""

    def stops(self, state: Any, reason: str) -> bool:
        """Whether a skip for `reason` stops the build instead (data.on_bad_input=stop)."""

    def skip_key(self, reason: str) -> str:
        """The build report's key for an entry skipped for `reason`."""

    def kept_keys(self, example: dict) -> list[str]:
        """The report's keys a stored example counts under (at least "kept")."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    what: str  # the report key
    message: str


def apply(recipe: Recipe, name: str, split: str, state: Any) -> Any:
    """One step of one entry: its new state, or `Skipped`; raises the stop error instead
    where the bad-input policy says so."""
    try:
        return recipe.step(name, split, state)
    except BadInputError as e:
        if len(e.args) != 2:  # already a stop error
            raise
        reason, message = e.args
        if recipe.stops(state, reason):
            raise stop_error(message) from None
        return Skipped(recipe.skip_key(reason), message)


@dataclasses.dataclass
class Tally:
    """What a build did with its entries: counts per (split, key), and the first skip
    messages in corpus order (split, then position in it), whichever order they came in."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first: list = dataclasses.field(default_factory=list)  # (split rank, index, message)

    def count(self, split: str, what: str, n: int = 1) -> None:
        self.counts[(split, what)] += n

    def note(self, split: str, index: int, message: str) -> None:
        self.first.append((SPLITS.index(split), index, message))
        if len(self.first) > 2 * FIRST_SKIPPED:
            self._trim()

    def _trim(self) -> None:
        self.first = sorted(self.first)[:FIRST_SKIPPED]

    def merge(self, other: "Tally") -> None:
        self.counts.update(other.counts)
        self.first.extend(other.first)
        self._trim()

    def messages(self) -> list[str]:
        self._trim()
        return [message for _, _, message in self.first]

    def to_json(self) -> dict:
        self._trim()
        return {"counts": [[s, w, n] for (s, w), n in sorted(self.counts.items())],
                "first": [list(f) for f in self.first]}

    @classmethod
    def from_json(cls, saved: dict) -> "Tally":
        tally = cls()
        for split, what, n in saved["counts"]:
            tally.counts[(split, what)] += n
        tally.first = [tuple(f) for f in saved["first"]]
        return tally


def nothing_kept(tally: Tally) -> InputFileError:
    """The error of a build whose every entry was skipped (the same from either runner)."""
    counts = {f"{s}/{w}": n for (s, w), n in sorted(tally.counts.items())}
    return InputFileError(f"every entry was skipped ({counts}), e.g. "
                          f"{'; '.join(tally.messages()[:3])}")


def run(recipe: Recipe, split: str, index: int, entry: Any, tally: Tally) -> dict | None:
    """Every step of one entry, in one process: its example, or None once counted as
    skipped (the Beam build does the same step by step)."""
    state = entry
    for name in recipe.steps:
        state = apply(recipe, name, split, state)
        if isinstance(state, Skipped):
            tally.count(split, state.what)
            tally.note(split, index, state.message)
            return None
    for what in recipe.kept_keys(state):
        tally.count(split, what)
    return state


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from omniflatten_jax.speech import load_speech_tokenizer

    return load_speech_tokenizer(path)


def _rebuild(cls, fields: dict):
    return cls(tokenizer=_tokenizer(fields["tokenizer_path"]), **fields)


def reduce_with_tokenizer_file(ctx) -> tuple | None:
    """For a context's ``__reduce__``: pickle it without its tokenizer when the tokenizer came
    from a file (`tokenizer_path`), which the unpickling process reads instead (once)."""
    if getattr(ctx, "tokenizer_path", None) is None:
        return None
    fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)
              if f.name != "tokenizer"}
    return _rebuild, (type(ctx), fields)
