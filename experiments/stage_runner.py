"""What every stage runner does around its own data and evaluation: train (or resume, or find
the stage complete), then evaluate once and keep the result in ``<stage>/eval.json``.

A rerun of a finished stage trains nothing and shows the saved evaluation instead of
computing it again; process 0 alone writes the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from etils import epath

from omniflatten_jax.distributed import hosts, paths
from omniflatten_jax.stage_plan import StagePlan
from omniflatten_jax.training.runner import StageResult

log = logging.getLogger(__name__)


def train_then_evaluate(plan: StagePlan, workdir: str, train: Callable[[], StageResult],
                        evaluate: Callable[[StageResult], dict],
                        show: Callable[[dict, str], None]) -> dict:
    """``train()``, then ``{"stage", "step", "split": "test", **evaluate(result)}`` written to
    ``eval.json`` and shown (``show(evaluation, where)``); a stage that trained nothing and has
    one shows and returns it."""
    eval_path = epath.Path(paths.join(workdir, plan.name)) / "eval.json"
    result = train()
    if result.trained_steps == 0 and eval_path.exists():
        saved = json.loads(eval_path.read_text())
        show(saved, f"saved, {eval_path}")
        return saved
    evaluation = {"stage": plan.name, "step": result.step, "split": "test", **evaluate(result)}
    if hosts.is_primary():
        eval_path.write_text(json.dumps(evaluation, indent=2))
    show(evaluation, str(eval_path))
    return evaluation
