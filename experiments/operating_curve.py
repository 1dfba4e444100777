"""A trained duplex stage's operating curve under other decoding settings, on validation.

    python experiments/operating_curve.py --workdir=./workdir --stage=duplex_2 --out=DIR \
        [--set=decoding.stop_threshold=0.8 --set=eval.policy_onsets=0.1,0.2,0.3 ...]

What each duplex stage does after training (`dialogue_stage.choose_policy`), for a policy
setting the stage did not try: the onset thresholds swept over the validation split's FDB
clips, scored by FDB's rules on the speech tokens, the point a stage would choose, and
``DIR/operating_curve.png`` and ``.json``. Nothing in the workdir changes.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli  # noqa: E402  (after the path: run as a script)

FLAGS = flags.FLAGS


def define_flags() -> None:
    from omniflatten_jax.config.stages import CHUNKED_STAGES

    flags.DEFINE_string("workdir", "./workdir", "the workdir of the trained stage")
    flags.DEFINE_enum("stage", "duplex_2", CHUNKED_STAGES, "the duplex stage")
    flags.DEFINE_string("out", None, "where the curve goes", required=True)
    flags.DEFINE_string("config", "embedded", "a named configuration (experiments/configs)")
    flags.DEFINE_multi_string("set", [], "configuration overrides (decoding.*, eval.policy_*)")


def main() -> None:
    from data_pipelines.builders.dialogues import data_source
    from data_pipelines.prepare import prepare_dialogues
    from experiments.configs import get_config
    from experiments.dialogue_stage import choose_policy
    from omniflatten_jax.checkpoint.placed import restore_placed
    from omniflatten_jax.config import to_dict
    from omniflatten_jax.distributed import paths
    from omniflatten_jax.evaluation.operating_curve import format_curve
    from omniflatten_jax.speech import load_speech_tokenizer
    from omniflatten_jax.stage_plan import plan_stage

    cfg = get_config(FLAGS.config, FLAGS.set)
    plan = plan_stage(cfg, FLAGS.stage)
    prepared = prepare_dialogues(cfg, FLAGS.workdir)
    source = data_source(prepared.data_dir, prepared.config_name, "validation", cfg.layout)
    records = [source[i] for i in range(len(source))]
    tokenizer = load_speech_tokenizer(prepared.tokenizer_path)
    placed = restore_placed(paths.join(FLAGS.workdir, FLAGS.stage, "checkpoints"), cfg.mesh,
                                 layout=cfg.layout)
    os.makedirs(FLAGS.out, exist_ok=True)
    chosen = choose_policy(cfg, plan, placed, records, tokenizer, FLAGS.out)
    with open(os.path.join(FLAGS.out, "operating_curve.json"), "w") as f:
        json.dump({**chosen, "policy": to_dict(chosen["policy"]), "settings": FLAGS.set}, f,
                  indent=1)
    print(f"{FLAGS.stage} ({FLAGS.workdir}), {' '.join(FLAGS.set) or 'the configured policy'}:")
    print(format_curve(chosen["points"], chosen["chosen"], chosen["data"]))
    print(f"chosen: {chosen['policy'].describe()}; wrote {FLAGS.out}/operating_curve.png, .json")


if __name__ == "__main__":
    cli.run(main, define_flags)
