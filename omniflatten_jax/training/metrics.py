"""Where training metrics go: stdout, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes them (`MetricsWriter(..., enabled=False)` on the other hosts), so a pod
run has one line per logged step. The stage folder may be a bucket (`gs://`): files are written
through `etils.epath`, and the JSON lines, which object stores cannot append to, are rewritten
whole there.
"""

from __future__ import annotations

import json
import os
import time

from etils import epath

from omniflatten_jax.distributed import paths


class MetricsWriter:
    """One JSON line per logged step. A run that resumes from step `resumed_from` continues
    the same file without the lines of the steps after it, which a killed run logged and the
    resumed one logs again: the file keeps one line per step. TensorBoard is told the same by
    a restart marker at the first step logged again."""

    def __init__(self, stage_dir: str, enabled: bool = True, resumed_from: int = 0):
        self.enabled = enabled
        self.path = epath.Path(paths.join(stage_dir, "metrics.jsonl"))
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remote = paths.is_url(stage_dir)
        kept = _lines_up_to(self.path, resumed_from)
        self._lines = kept if self._remote else []
        if not self._remote:  # rewritten whole (beside, then renamed), then appended to
            scratch = self.path.parent / (self.path.name + ".writing")
            scratch.write_text("".join(kept))
            scratch.replace(self.path)
        self._jsonl = None if self._remote else self.path.open("a")
        from tensorboardX import SummaryWriter
        from tensorboardX.proto import event_pb2

        # Event files are named by the second they open in: a resume within the same second
        # must not reopen (and overwrite) the killed run's file.
        self._tb = SummaryWriter(paths.join(stage_dir, "tensorboard"),
                                 filename_suffix=f".{os.getpid()}.{resumed_from}")
        # TensorBoard drops what earlier event files hold from this step on (its purge of a
        # restarted run's orphaned data): the steps a killed run logged after its checkpoint.
        restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._tb.file_writer.add_event(event_pb2.Event(step=resumed_from + 1,
                                                       session_log=restart))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, "time": time.time(), **metrics}) + "\n"
        if self._remote:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.close()
        self._tb.close()


def _lines_up_to(path: epath.Path, step: int) -> list[str]:
    """The file's lines of steps up to `step` (a torn last line is dropped)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return kept


def read_metrics(stage_dir: str) -> list[dict]:
    path = epath.Path(paths.join(stage_dir, "metrics.jsonl"))
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
