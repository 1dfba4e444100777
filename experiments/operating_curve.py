"""A trained duplex stage's operating curve under other decoding settings, on validation.

    python experiments/operating_curve.py --workdir=./workdir --stage=duplex_2 --out=DIR \
        [--set=decoding.stop_threshold=0.8 --set=eval.policy_onsets=0.1,0.2,0.3 ...]

What each duplex stage does after training (`dialogue_stage.choose_policy`), for a policy
setting the stage did not try: the onset thresholds swept over the validation split's FDB
clips, scored by FDB's rules on the speech tokens, the point a stage would choose, and
``DIR/operating_curve.png`` and ``.json``. Nothing in the workdir changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
    from data_pipelines.builders.dialogues import data_source
    from data_pipelines.prepare import prepare_dialogues
    from experiments.configs import get_config
    from experiments.dialogue_stage import choose_policy
    from omniflatten_jax.config import to_dict
    from omniflatten_jax.config.stages import CHUNKED_STAGES
    from omniflatten_jax.distributed import paths
    from omniflatten_jax.evaluation.operating_curve import format_curve
    from omniflatten_jax.model.placement import PlacedModel
    from omniflatten_jax.speech import load_speech_tokenizer
    from omniflatten_jax.stage_plan import plan_stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="./workdir")
    parser.add_argument("--stage", default="duplex_2", choices=CHUNKED_STAGES)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="embedded")
    parser.add_argument("--set", action="append", default=[], help="config overrides")
    args = parser.parse_args(argv)
    cfg = get_config(args.config, args.set)
    plan = plan_stage(cfg, args.stage)
    prepared = prepare_dialogues(cfg, args.workdir)
    source = data_source(prepared.data_dir, prepared.config_name, "validation", cfg.layout)
    records = [source[i] for i in range(len(source))]
    tokenizer = load_speech_tokenizer(prepared.tokenizer_path)
    placed = PlacedModel.restore(paths.join(args.workdir, args.stage, "checkpoints"), cfg.mesh,
                                 layout=cfg.layout)
    os.makedirs(args.out, exist_ok=True)
    chosen = choose_policy(cfg, plan, placed, records, tokenizer, args.out)
    with open(os.path.join(args.out, "operating_curve.json"), "w") as f:
        json.dump({**chosen, "policy": to_dict(chosen["policy"]), "settings": args.set}, f,
                  indent=1)
    print(f"{args.stage} ({args.workdir}), {' '.join(args.set) or 'the configured policy'}:")
    print(format_curve(chosen["points"], chosen["chosen"], chosen["data"]))
    print(f"chosen: {chosen['policy'].describe()}; wrote {args.out}/operating_curve.png, .json")


if __name__ == "__main__":
    main()
