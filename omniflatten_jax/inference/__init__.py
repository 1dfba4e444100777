"""Decoding: batched generation under legal-token masks (and, later, full-duplex streaming)."""
