"""Serves a trained duplex stage live: a page to talk to it, a WebSocket per conversation.

    python experiments/serve.py --checkpoint=CKPT [--host=127.0.0.1] [--port=8998]
        [--sessions=8] [--token=SECRET] [--allowed_origins=https://a.example,...]
        [--max_seconds=600] [--buffer_seconds=2] [--tls_cert=F --tls_key=F]
        [--decoding=FIELD=VALUE ...]

Open http://127.0.0.1:8998/ (with ?token=SECRET when one is set). The model is compiled for
`--sessions` rows before the port opens; every conversation is a row of one compiled step
per 400 ms chunk (`omniflatten_jax.serving`). Browsers give a page the microphone only on
https or on localhost: to serve other machines, pass --host and a certificate. SIGTERM or
Ctrl-C closes every conversation with a reason, then exits.
"""

from __future__ import annotations

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config import PARAM_PLACEMENTS, ServeConfig

    d = ServeConfig()
    flags.DEFINE_string("checkpoint", None, "a duplex stage's checkpoints folder or one step "
                        "folder in it")
    flags.DEFINE_string("config", None, "instead of --checkpoint, for benchmarks: a named "
                        "configuration with random weights (a step costs the same whatever "
                        "they are); needs --speech_tokenizer")
    flags.DEFINE_string("stage", "duplex_2", "with --config: the stage whose chunk layout")
    flags.DEFINE_string("speech_tokenizer", None, "a speech tokenizer file to use instead of "
                        "the checkpoint's own (same number of codes)")
    flags.DEFINE_string("host", d.host, "the interface to listen on (0.0.0.0: every one)")
    flags.DEFINE_integer("port", d.port, "the TCP port")
    flags.DEFINE_integer("sessions", d.sessions, "conversations at once (the step's batch); "
                         "one more is refused")
    flags.DEFINE_string("token", d.token, "an access token callers must present (default: "
                        "none; $OMNIFLATTEN_SERVE_TOKEN is read when the flag is not given)")
    flags.DEFINE_list("allowed_origins", list(d.allowed_origins), "origins of other pages "
                      "that may open conversations (the server's own page always may)")
    flags.DEFINE_float("max_seconds", d.max_seconds, "a conversation's longest length")
    flags.DEFINE_float("buffer_seconds", d.buffer_seconds, "user audio held ahead of the "
                       "chunk clock before a client is refused as too fast")
    flags.DEFINE_integer("max_message_bytes", d.max_message_bytes, "the largest message")
    flags.DEFINE_string("tls_cert", None, "a certificate (PEM) to serve https and wss")
    flags.DEFINE_string("tls_key", None, "the certificate's private key (PEM)")
    flags.DEFINE_enum("params", "replicated", PARAM_PLACEMENTS, "parameters replicated on "
                      "each local device (no gathers per step; the model must fit a chip) or "
                      "sharded over them (FSDP)")
    cli.define_policy_flags()


def serve_config():
    from omniflatten_jax.config import ServeConfig

    return ServeConfig(host=FLAGS.host, port=FLAGS.port, sessions=FLAGS.sessions,
                       token=FLAGS.token or os.environ.get("OMNIFLATTEN_SERVE_TOKEN", ""),
                       allowed_origins=tuple(FLAGS.allowed_origins),
                       max_seconds=FLAGS.max_seconds, buffer_seconds=FLAGS.buffer_seconds,
                       max_message_bytes=FLAGS.max_message_bytes)


def tls_context():
    if not FLAGS.tls_cert and not FLAGS.tls_key:
        return None
    if not (FLAGS.tls_cert and FLAGS.tls_key):
        raise ValueError("--tls_cert and --tls_key go together")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(FLAGS.tls_cert, FLAGS.tls_key)
    return context


def random_model():
    """`--config`'s model with random weights and `--speech_tokenizer` (a benchmark's)."""
    import jax

    from experiments.configs import get_config
    from omniflatten_jax.inference.duplex import DuplexModel, DuplexSettings
    from omniflatten_jax.model import transformer
    from omniflatten_jax.model.placement import PlacedModel
    from omniflatten_jax.speech.tokenizer import load_speech_tokenizer
    from omniflatten_jax.stage_plan import plan_stage

    if not FLAGS.speech_tokenizer:
        raise ValueError("--config needs --speech_tokenizer (random weights come with none)")
    cfg = get_config(FLAGS.config, [])
    speech = load_speech_tokenizer(FLAGS.speech_tokenizer)
    if speech.num_codes != cfg.layout.num_speech_codes:
        raise ValueError(f"{FLAGS.speech_tokenizer} has {speech.num_codes} codes; "
                         f"{FLAGS.config} has {cfg.layout.num_speech_codes}")
    model = transformer(cfg.model, cfg.layout.vocab_size)
    placed = PlacedModel.create(model, model.init(jax.random.key(0)), cfg.mesh, FLAGS.params)
    return DuplexModel(placed, cfg.layout, DuplexSettings.of_plan(plan_stage(cfg, FLAGS.stage)),
                       speech, where=f"{FLAGS.config} (random weights)", stage=FLAGS.stage)


def main() -> None:
    from omniflatten_jax.inference.duplex import load_duplex
    from omniflatten_jax.inference.live import LiveSession
    from omniflatten_jax.serving.app import serve
    from omniflatten_jax.serving.engine import Engine

    cfg, tls = serve_config(), tls_context()
    if bool(FLAGS.checkpoint) == bool(FLAGS.config):
        raise ValueError("give --checkpoint (a trained duplex stage) or, for a benchmark, "
                         "--config with --speech_tokenizer")
    model = (load_duplex(FLAGS.checkpoint, placement=FLAGS.params,
                         speech_tokenizer=FLAGS.speech_tokenizer)
             if FLAGS.checkpoint else random_model())
    model = model.with_policy(cli.policy_from_flags(model.settings.policy))
    live = LiveSession(model, rows=cfg.sessions)
    seconds = live.compile()
    scheme = "https" if tls else "http"
    print(f"{model.stage} {model.where}: {cfg.sessions} conversations of "
          f"{live.chunk_seconds * 1000:.0f} ms chunks, compiled in {seconds:.1f} s; serving {scheme}://{cfg.host}:{cfg.port}/"
          f"{'?token=...' if cfg.token else ''} (Ctrl-C or SIGTERM stops it)", flush=True)
    serve(Engine(live, cfg), ssl_context=tls)
    print("stopped: every conversation was closed with a reason", flush=True)


if __name__ == "__main__":
    cli.run(main, define_flags)
