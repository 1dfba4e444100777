"""Everything that turns raw material (audio, transcripts, text dialogues) into training data."""
