"""The server's figures in Prometheus' text format (``GET /metrics``): what an operator watches
(conversations, slots in use, the time of each step, chunks that arrived late)."""

from __future__ import annotations

import bisect
import collections

# Step seconds: a chunk is 0.4 s, so the budget is under the last finite bucket.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.8, 1.6)
PREFIX = "omniflatten_"


class Metrics:
    def __init__(self, slots: int):
        self.slots = slots
        self.slots_in_use = 0
        self.conversations = 0  # started
        self.refused = collections.Counter()  # by reason: busy, token, origin, protocol
        self.closed = collections.Counter()  # by reason: hang_up, limit, error, shutdown
        self.chunks = 0
        self.chunks_late = 0
        self.steps = 0
        self.step_counts = [0] * (len(STEP_BUCKETS) + 1)
        self.step_sum = 0.0

    def observe_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_sum += seconds
        self.step_counts[bisect.bisect_left(STEP_BUCKETS, seconds)] += 1

    def render(self) -> str:
        lines = []

        def metric(name, kind, help_text, samples):
            lines.extend([f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"])
            lines.extend(f"{PREFIX}{name}{labels} {value}" for labels, value in samples)

        metric("slots", "gauge", "Conversations the server holds at once.",
               [("", self.slots)])
        metric("slots_in_use", "gauge", "Conversations now open.", [("", self.slots_in_use)])
        metric("conversations_total", "counter", "Conversations started.",
               [("", self.conversations)])
        metric("conversations_refused_total", "counter", "Connections refused, by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.refused.items())])
        metric("conversations_closed_total", "counter", "Conversations ended, by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.closed.items())])
        metric("chunks_total", "counter", "Chunks of conversation stepped.", [("", self.chunks)])
        metric("chunks_late_total", "counter", "Chunks padded with silence because the "
               "client's audio was late.", [("", self.chunks_late)])
        cumulative, buckets = 0, []
        for bound, count in zip(STEP_BUCKETS + (float("inf"),), self.step_counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            buckets.append((f'_bucket{{le="{le}"}}', cumulative))
        metric("step_seconds", "histogram", "Time of one step of every open conversation (the "
               "model and the speech decode).",
               buckets + [("_sum", round(self.step_sum, 6)), ("_count", self.steps)])
        return "\n".join(lines) + "\n"
