"""Text dialogues from the `chatterbot-corpus` wheel (BSD): YAML conversations per topic."""

from __future__ import annotations

import importlib.resources

import yaml

LANGUAGES = {"en": "english", "zh": "chinese"}


def load_conversations(language: str = "en") -> list[list[str]]:
    """Every conversation (a list of alternating turns), in a stable order (file, position)."""
    if language not in LANGUAGES:
        raise ValueError(f"embedded corpus language must be one of {sorted(LANGUAGES)}, "
                         f"not {language!r}")
    folder = importlib.resources.files("chatterbot_corpus") / "data" / LANGUAGES[language]
    conversations = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yml"):
            continue
        doc = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if turns:
                conversations.append(turns)
    return conversations
