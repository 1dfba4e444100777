"""The token format: how dialogue streams become one flat sequence of ids and back.

Owns the text tokenizers (`text_tokenizers`), transcript normalisation (`transcripts`), the
streams and sequential layouts of alignment and half_duplex (`sequence`), the duplex stages'
chunked layouts (`chunk_layout`), the ragged dialogue -> per-chunk arrays step
(`dialogue_chunks`) and what a batch is (`batches`). The id space itself is
`config.token_layout`. May import `config` only: it is pure numpy/jax over ids.
"""
