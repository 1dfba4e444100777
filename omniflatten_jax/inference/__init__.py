"""Decoding on placed parameters: batched generation under legal-id masks, and
chunk-synchronous full-duplex streaming (the duplex command)."""
