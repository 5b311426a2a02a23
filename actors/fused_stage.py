"""The batch engine's stages after reading, in one actor: featurize -> predict -> write.

For CPU inference (`foldray.actors.batch.fused_stages`): the model actor featurizes, runs
and writes each job itself, as a loop over `Predictor` would, so a run starts one kind of
process instead of three and no job's features or samples cross the object store. Each
step is the separate stage's own code (`FeaturizeStage`, `PredictStage`, `WriteStage`), so
rows, error rows, metrics and retries are the same either way.
"""

from __future__ import annotations

from typing import Any

from foldray.actors.predict_stage import PredictStage
from foldray.actors.prepare_stage import FeaturizeStage
from foldray.actors.write_stage import WriteStage


class FusedStage:
    """One job in, its final result row out (the outputs written)."""

    def __init__(self, featurize: dict[str, Any], predict: dict[str, Any], write: dict[str, Any]) -> None:
        self.featurize = FeaturizeStage(**featurize)
        self.predict = PredictStage(**predict)
        self.write = WriteStage(**write)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.write(self.predict(self.featurize(row)))
