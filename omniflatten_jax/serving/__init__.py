"""The live server: callers talk to a duplex model from a browser page or any WebSocket client.

Owns the network side of a live conversation: the wire `protocol`, the `conversation` of each
caller (its audio waiting for the clock, its timings), the `engine` (slots over the rows of
one `inference.live.LiveSession`, stepped together by a chunk clock), the `metrics`, and the
aiohttp `app` with its `page/`. Row 6: it may import everything below it; the command is
``experiments/serve.py``.
"""
