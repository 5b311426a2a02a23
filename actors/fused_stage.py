"""The batch engine's stages after reading, in one actor: featurize -> predict -> write.

For CPU inference (`foldray.actors.batch.fused_stages`): the model actor featurizes, runs
and writes each job itself, as a loop over `Predictor` would, so a run starts one kind of
process instead of three and no job's features or samples cross the object store. Each
step is the separate stage's own code (`FeaturizeStage`, `PredictStage` or
`PredictBatchStage`, `WriteStage`), so rows, error rows, metrics and retries are the same
either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foldray.actors.predict_stage import PredictBatchStage, PredictStage, batch_columns, batch_rows
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


class FusedBatchStage:
    """`Dataset.map_batches`: a batch of jobs featurized one by one, predicted in shared
    forward passes (`PredictBatchStage`: `--model-batch-size`, screens), then written."""

    def __init__(self, featurize: dict[str, Any], predict: dict[str, Any], write: dict[str, Any]) -> None:
        self.featurize = FeaturizeStage(**featurize)
        self.predict = PredictBatchStage(**predict)
        self.write = WriteStage(**write)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        featurized = [self.featurize(row) for row in batch_rows(batch)]
        predicted = batch_rows(self.predict(batch_columns(featurized)))
        return batch_columns([self.write(row) for row in predicted])
