"""Where training metrics go: stdout, `metrics.jsonl` and TensorBoard event files."""

from __future__ import annotations

import json
import os
import time


class MetricsWriter:
    """One JSON line per logged step (appended: a resumed run continues the same file)."""

    def __init__(self, stage_dir: str):
        os.makedirs(stage_dir, exist_ok=True)
        self.path = os.path.join(stage_dir, "metrics.jsonl")
        self._jsonl = open(self.path, "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(stage_dir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def read_metrics(stage_dir: str) -> list[dict]:
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
