"""Test-only faults for the batch engine, installed in every Ray worker of one test driver.

Not a product setting: the test starts its driver with Ray's job-level
`worker_process_setup_hook` pointing at `install`, so only that driver's workers get them.
Jobs opt in by name: `*oom*` -> torch.OutOfMemoryError on the model actor, `*flaky*` ->
two transient OSErrors on write (then it succeeds), `*diskfull*` -> ENOSPC on every write.
"""

from __future__ import annotations

import collections
import errno

HOOK = "tests.jobs.batch_faults.install"


def install() -> None:
    import torch

    from foldray.actors import write_stage
    from foldray.predictor import Predictor

    predict_featurized = Predictor.predict_featurized

    def predict(self, by_seed, settings):
        job = next(iter(by_seed.values())).job
        if "oom" in job.name:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                         "(GPU 0; 79.15 GiB total capacity)\nmore detail")
        return predict_featurized(self, by_seed, settings)

    write_prediction = write_stage.write_prediction
    calls: collections.Counter[str] = collections.Counter()

    def write(out_url, job, *args, **kwargs):
        calls[job.name] += 1
        if "flaky" in job.name and calls[job.name] <= 2:
            raise OSError(errno.EIO, "simulated transient I/O error")
        if "diskfull" in job.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_prediction(out_url, job, *args, **kwargs)

    Predictor.predict_featurized = predict
    write_stage.write_prediction = write
