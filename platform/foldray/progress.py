"""Progress bars for long local work (tqdm): jobs, recycles, diffusion steps, training steps.

`StageBars` is the `progress(stage, done, total)` hook the model takes
(AlphaFold3.predict, Predictor): one bar per stage, replaced when a new round starts.
`JobsBar` counts jobs in `validate` / `predict`; `StepBar` shows training steps on the
driver of `foldray train`; `RunProgress` counts the jobs of a batch run (predict-batch,
screen, featurize). Bars show only on a terminal and never with `--quiet`, so logs
and pipes stay clean.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any

from tqdm import tqdm


def interactive(quiet: bool = False) -> bool:
    """Draw bars? Only on a terminal, and not when asked to be quiet."""
    return not quiet and sys.stderr.isatty()


class StageBars:
    """progress(stage, done, total) -> a transient tqdm bar per stage (recycle, diffusion)."""

    def __init__(self, enabled: bool = True, prefix: str = "") -> None:
        self.enabled, self.prefix = enabled, prefix
        self.bars: dict[str, Any] = {}
        self.calls: list[tuple[str, int, int]] = []   # what was reported, for callers and tests

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))
        if not self.enabled:
            return
        bar = self.bars.get(stage)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = self.bars[stage] = tqdm(total=total, desc=f"{self.prefix}{stage}", leave=False,
                                          file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class JobsBar:
    """One bar over many jobs (`validate`, `predict` of a folder): `done/total jobs, rate, ETA`.

    `write` prints a result line above the bar (tqdm.write), so per-job lines and the bar do
    not tear each other apart on a terminal; when disabled it is a plain print.
    """

    def __init__(self, total: int | None, *, enabled: bool, desc: str = "jobs", unit: str = "job") -> None:
        self.bar: Any = None
        if enabled:
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                            position=0, leave=True)

    def update(self, n: int = 1, status: str | None = None) -> None:
        if self.bar is not None:
            if status:
                self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(n)

    def write(self, line: str, *, file: Any = None) -> None:
        out = file or sys.stdout
        if self.bar is not None:
            tqdm.write(line, file=out)
        else:
            print(line, file=out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepBar:
    """Training steps seen from the driver: `step/max_steps` with the latest loss.

    Ray Train workers log `foldray-train:` lines (job logs, dashboard); this bar is the
    interactive view for a driver attached to a terminal, fed from the run's metrics rows.
    """

    def __init__(self, max_steps: int, *, enabled: bool, desc: str = "train") -> None:
        self.bar: Any = None
        if enabled:
            self.bar = tqdm(total=max_steps, desc=desc, unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def show(self, rows: list[dict[str, Any]]) -> None:
        """Move to the last reported step (rows as in metrics.jsonl; a resume may go back)."""
        if self.bar is None or not rows:
            return
        last = rows[-1]
        step = int(last.get("step", 0))
        if step < self.bar.n:
            self.bar.reset(total=self.bar.total)
        loss = last.get("loss")
        if isinstance(loss, (int, float)):
            self.bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


PROGRESS_LINE_INTERVAL_S = 10.0   # off a terminal: at most one progress line this often


class RunProgress:
    """Jobs finished by a batch run, as the driver sees their rows come back.

    A bar with the ok/error counts on a terminal; elsewhere (a pipe, `ray job submit` logs)
    one `desc: done/total ...` line at most every `interval_s`, so logs stay short.
    """

    def __init__(self, total: int, *, desc: str = "jobs", quiet: bool = False,
                 interval_s: float = PROGRESS_LINE_INTERVAL_S, stream: Any = None) -> None:
        self.total, self.desc, self.interval_s = total, desc, interval_s
        self.stream = stream or sys.stderr
        self.enabled = not quiet
        self.counts: collections.Counter[str] = collections.Counter()
        self.started = self.shown = time.monotonic()
        self.bar: Any = None
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(total=total, desc=desc, unit="job", file=self.stream, dynamic_ncols=True)

    def update(self, status: str) -> None:
        self.counts[status] += 1
        if self.bar is not None:
            self.bar.set_postfix_str(self._counts(), refresh=False)
            self.bar.update(1)
        elif self.enabled and (now := time.monotonic()) - self.shown >= self.interval_s:
            self.shown = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        done = sum(self.counts.values())
        return (f"{self.desc}: {done}/{self.total} done ({self._counts()}) after "
                f"{time.monotonic() - self.started:.0f} s")

    def _counts(self) -> str:
        return ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
