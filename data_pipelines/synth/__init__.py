"""Synthetic speech: text sources, the speech synthesiser, voices."""
