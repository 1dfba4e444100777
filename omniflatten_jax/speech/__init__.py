"""Audio I/O and checks, speech tokenizers and decoders."""

from omniflatten_jax.speech import kmeans  # noqa: F401  (registers the embedded tokenizer)
from omniflatten_jax.speech.audio import AudioError, load_audio, save_audio
from omniflatten_jax.speech.tokenizer import SpeechTokenizer, load_speech_tokenizer

__all__ = ["AudioError", "SpeechTokenizer", "load_audio", "load_speech_tokenizer", "save_audio"]
