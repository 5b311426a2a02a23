"""Test-only fault for `foldray train`, loaded through the `run.callbacks` extension point.

Not a product setting: a test adds `run.callbacks=[{path: tests.jobs.train_faults:FailOnce,
options: {step: 3, marker: /tmp/...}}]`, and every train worker of that run loads it. Rank 0
raises once, before optimizer step `step + 1`; the marker file makes it fire only once, so
the restarted workers (Ray Train's FailureConfig) go on from the last checkpoint.
"""

from __future__ import annotations

import os

from foldray.training.loop import TrainCallback, TrainLoop

FAIL_ONCE = "tests.jobs.train_faults:FailOnce"


class InjectedFailure(RuntimeError):
    """The failure FailOnce raises."""


class FailOnce(TrainCallback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_step_start(self, loop: TrainLoop) -> None:
        if loop.rank != 0 or loop.step != self.step or os.path.exists(self.marker):
            return
        with open(self.marker, "w") as handle:
            handle.write(str(loop.step))
        raise InjectedFailure(f"injected failure at step {loop.step}")
