"""The commands room: every entry point of the project, and what only commands need.

Each command is a script run as ``python experiments/NAME.py --flag=value`` from the
repository root; all parse their flags, start and fail the same way (`cli`). The rest of the
room: the named configurations (`configs/`), the stage runners that `run.py` drives
(`alignment_stage`, `dialogue_stage`), the TPU topologies the launchers and `plan.py` share
(`tpu_topology`), and the launch recipes for pods (`launch/`). Nothing outside this folder
imports it.
"""

# Every command, with what it is for: the one list (the README's "Commands" table mirrors it,
# and `tests/test_commands.py` holds both to the scripts that exist).
COMMANDS = {
    "run": "train a stage of the curriculum, or all of them (the main job)",
    "prepare": "build a workdir's datasets once, locally or on Apache Beam",
    "duplex": "stream a recording through a duplex stage, as if live",
    "fdb_samples": "write a workdir's held-out dialogues as Full-Duplex-Bench samples",
    "fdb": "stream and score Full-Duplex-Bench samples with a duplex stage",
    "to_hf": "export a checkpoint as a Hugging Face folder (Qwen2, Qwen3)",
    "from_hf": "import a Hugging Face folder (Qwen2, Qwen3) as a checkpoint",
    "upgrade_checkpoint": "describe a checkpoint written before checkpoints described themselves",
    "plan": "compile a stage's train step for a TPU topology: memory, batch, fit",
    "operating_curve": "a trained duplex stage's operating curve under other decoding settings",
    "diagnose_turns": "teacher-forced P(speak) around turn ends, pauses and backchannels",
    "show_example": "print one flattened dialogue, chunk by chunk",
    "serve": "a live server: talk to a duplex stage from a browser page, many at once",
    "serve_bench": "conversations at once on the live server: step time, late chunks, latency",
    "synthesize_recording": "synthesise a user recording to talk to the duplex command",
    "benchmark_train_step": "time the train step (tokens/s, MFU) per attention backend",
    "benchmark_vs_torch": "our train step against transformers + torch.compile",
    "benchmark_duplex": "per-chunk latency and real-time factor of duplex decoding",
    "benchmark_data": "Grain pipeline throughput by worker count",
    "benchmark_data_build": "dataset build time, one process against Apache Beam",
    "benchmark_guard": "the cost of the numerics guard in the train step",
}
