"""What a dataset was built from, so that a changed input rebuilds it (and says why).

A prepared dataset's cache key holds its settings and a fingerprint of its inputs: the bytes
of every text input (manifest, LibriSpeech transcripts, dialogue JSONL, the embedded corpus'
YAML files) and, for audio files, their size and modification time. Audio is not hashed by
content: reading 100k hours to decide whether to rebuild would cost as much as a build, and a
changed recording changes its size or time (`touch` a file to force its rebuild). The
synthesiser's version stands for the audio it makes.

Each dataset folder keeps its inputs (``inputs.json``); the next build of the same source
compares with the newest earlier one and logs what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import time

from etils import epath

INPUTS_FILE = "inputs.json"


@dataclasses.dataclass(frozen=True)
class Inputs:
    source: str  # the configured source, e.g. "manifest:/data/train.jsonl"
    files: dict[str, str]  # name -> "sha256:..." (text), "stat:SIZE:MTIME_NS" (audio), version

    @property
    def key(self) -> str:
        blob = json.dumps({"source": self.source, "files": self.files}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def to_json(self) -> dict:
        return {"source": self.source, "key": self.key, "files": self.files}

    def changes_since(self, old: "Inputs") -> str:
        """What differs from `old`, in words (a few names of each kind)."""
        changed = [k for k in self.files if k in old.files and self.files[k] != old.files[k]]
        added = [k for k in self.files if k not in old.files]
        removed = [k for k in old.files if k not in self.files]
        parts = [f"{len(names)} {what} ({', '.join(os.path.basename(n) for n in names[:3])}"
                 f"{', ...' if len(names) > 3 else ''})"
                 for what, names in (("changed", changed), ("added", added),
                                     ("removed", removed)) if names]
        return "; ".join(parts) or "no input changed (a setting did)"


def _sha(path: str) -> str:
    return "sha256:" + hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _synthesiser() -> str:
    """What the synthesised audio depends on: the eSpeak wheel and how it is called."""
    from data_pipelines.synth.espeak import REVISION

    return f"{importlib.metadata.version('espeakng-loader')} {REVISION}"


def _embedded(language: str) -> dict[str, str]:
    from data_pipelines.synth.chatterbot import LANGUAGES

    folder = importlib.resources.files("chatterbot_corpus") / "data" / LANGUAGES.get(
        language, language)
    files = {f"chatterbot/{p.name}": "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".yml")}
    files["espeakng-loader"] = _synthesiser()
    return files


def speech_text_inputs(source: str, language: str, items: dict) -> Inputs:
    """The inputs of a speech-text source; `items` are its utterances per split
    (`corpus.speech_text_items`), whose audio files are fingerprinted by size and time."""
    kind, _, arg = source.partition(":")
    if kind == "embedded":
        return Inputs(source, _embedded(language))
    files: dict[str, str] = {}
    if kind == "manifest":
        files[os.path.abspath(arg)] = _sha(arg)
    elif kind == "librispeech":
        for path in sorted(epath.Path(arg).glob("*/*/*.trans.txt")):
            files[os.path.abspath(str(path))] = _sha(str(path))
    for split in sorted(items):
        for item in items[split]:
            for audio in (item.audio, item.tts_audio):
                path = getattr(audio, "path", None)
                if path is not None:
                    files[os.path.abspath(path)] = _stat(path)
    return Inputs(source, files)


def dialogue_inputs(source: str, language: str) -> Inputs:
    """The inputs of a dialogue source: its JSONL file, or the embedded corpus."""
    kind, _, arg = source.partition(":")
    if kind == "jsonl" and arg:
        if not os.path.isfile(arg):
            raise FileNotFoundError(f"dialogue file {arg} does not exist (dialogue.source="
                                    f"{source})")
        return Inputs(source, {os.path.abspath(arg): _sha(arg), "espeakng-loader": _synthesiser()})
    return Inputs(source, _embedded(language))


def save(inputs: Inputs, folder: str) -> None:
    # The build time is recorded, not read from the file's mtime: object stores and some file
    # systems keep whole seconds, and two builds within a second must still be ordered.
    record = {**inputs.to_json(), "built_at_ns": time.time_ns()}
    (epath.Path(folder) / INPUTS_FILE).write_text(json.dumps(record, indent=1))


def why_rebuild(inputs: Inputs, datasets_dir: str, new_name: str) -> str:
    """Why a dataset of `inputs.source` is built anew: what changed since the newest finished
    dataset of the same source, or that there is none."""
    previous = []
    for path in epath.Path(datasets_dir).glob(f"*/{INPUTS_FILE}"):
        if path.parent.name == new_name or not (path.parent / "build_report.json").exists():
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("source") == inputs.source:
            previous.append((saved.get("built_at_ns", 0), path.parent.name, saved))
    if not previous:
        return f"no earlier build of {inputs.source}"
    _, name, saved = max(previous, key=lambda p: (p[0], p[1]))
    old = Inputs(saved["source"], saved["files"])
    return f"since {name}: {inputs.changes_since(old)}"
