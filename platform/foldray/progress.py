"""Progress bars for long local work (tqdm): jobs, recycles, diffusion steps.

`StageBars` is the `progress(stage, done, total)` hook the model takes
(AlphaFold3.predict, Predictor): one bar per stage, replaced when a new round starts.
Bars show only on a terminal and never with `--quiet`, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
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
