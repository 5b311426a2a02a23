"""The batch engine's CPU stages (read, featurize, write) start without importing torch:
a torch import costs ~2 s in every CPU actor, the largest part of predict-batch's start-up
(benchmarks/batch_overhead.py). Regression test for io/confidences importing the model's
ranking (torch) at module level."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["foldray.actors.prepare_stage", "foldray.actors.write_stage",
                                    "foldray.io.confidences", "foldray.features.pipeline"])
def test_cpu_stage_modules_do_not_import_torch(module):
    code = f"import sys, importlib; importlib.import_module({module!r}); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", f"{module} imports torch"
