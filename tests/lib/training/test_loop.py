"""The library training loop (foldray.training.loop) alone, on CPU, without Ray.

Exact arithmetic (accumulation, non-finite skip, EMA, cadence, resume) on a small linear
model; accumulation with ModelConfig.tiny() on two real structures (1l2y, and 102m cropped
to 24 tokens) through a deterministic trunk + distogram loss, and two steps of the real
training step; the `run.callbacks` extension point with the test fault of tests/jobs.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import nn

from foldray.features.batch import collate
from foldray.features.pipeline import CropSettings, featurize_job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.model.losses import distogram_loss
from foldray.training import training_sample
from foldray.training.config import CallbackSpec, OptimizerConfig, TrainConfig, load_train_config
from foldray.training.loop import (
    LoopSettings,
    TrainCallback,
    TrainLoop,
    build_parts,
    load_callbacks,
)
from foldray.training.optim import Ema, make_optimizer
from foldray.training.parallel import TrainStepModule
from tests.data_paths import STRUCTURES
from tests.jobs.train_faults import FAIL_ONCE, InjectedFailure

NO_WARMUP = OptimizerConfig(lr=1e-2, warmup_steps=0)


# ---------------------------------------------------------------------------- a linear model


class Linear(nn.Module):
    """step_fn(batch, generator) -> (mean squared error, terms); `poison` rows give NaN."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 2)

    def forward(self, batch, generator):
        error = ((self.layer(batch["x"]) - batch["y"]) ** 2).mean()
        if bool(batch["poison"].any()):
            error = error * float("nan")
        return error, {"loss": float(error.detach())}


def _data(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, generator=generator), "y": torch.randn(n, 2, generator=generator),
            "token_mask": torch.ones(n, 7, dtype=torch.bool), "poison": torch.zeros(n, dtype=torch.bool)}


def _split(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = batch["x"].shape[0]
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _loop(model: nn.Module, batches, *, ema: Ema | None = None, callbacks=(), sgd: bool = False,
          **settings) -> TrainLoop:
    optimizer, scheduler = make_optimizer(model.parameters(), NO_WARMUP)
    if sgd:                                  # not scale-invariant: a wrong 1/n would show
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = None
    return TrainLoop(model, model=model, params=list(model.parameters()), optimizer=optimizer,
                     scheduler=scheduler, ema=ema, batches=iter(batches),
                     generator=torch.Generator().manual_seed(0),
                     settings=LoopSettings(**{"max_steps": 3, **settings}), callbacks=callbacks)


class Recorder(TrainCallback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, loop):
        self.events.append(("start", loop.step))

    def on_validate(self, loop):
        self.events.append(("validate", loop.step))
        return {"val_metric": float(loop.step)}

    def on_report(self, loop, metrics, *, checkpoint):
        self.events.append(("report", loop.step, checkpoint, dict(metrics)))

    def on_checkpoint(self, loop, metrics):
        self.events.append(("checkpoint", loop.step))

    def on_train_end(self, loop):
        self.events.append(("end", loop.step))

    def kinds(self, kind: str) -> list[int]:
        return [event[1] for event in self.events if event[0] == kind]


def test_accumulation_equals_one_larger_batch():
    steps = [_data(4, seed) for seed in range(3)]
    whole, accumulated = Linear(), Linear()
    one = _loop(whole, steps, sgd=True, report_every=1).run()
    two = _loop(accumulated, [half for batch in steps for half in _split(batch, 2)], sgd=True,
                grad_accumulation=2, report_every=1).run()
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert one.samples_seen == two.samples_seen == 12 and one.step == two.step == 3


def test_non_finite_step_is_skipped_and_counted():
    batches = [_data(2, seed) for seed in range(3)]
    batches[1]["poison"][:] = True
    model, recorder = Linear(), Recorder()
    ema = Ema(model, 0.5)
    loop = _loop(model, batches, ema=ema, callbacks=[recorder], max_steps=2, report_every=1)
    loop.run()
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    shadow_before = {k: v.clone() for k, v in ema.shadow.items()}
    loop.settings = LoopSettings(max_steps=3, report_every=1)
    assert loop.skipped_steps == 1
    reports = [event[3] for event in recorder.events if event[0] == "report"]
    assert [r["skipped_steps"] for r in reports] == [0.0, 1.0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert loop.optimizer.param_groups[0]["lr"] == NO_WARMUP.lr      # the schedule still stepped
    assert loop.scheduler.last_epoch == 2
    loop.run()                                                       # step 3 trains again
    changed = any(not torch.equal(after_first[k], v) for k, v in model.state_dict().items())
    assert changed and loop.skipped_steps == 1
    for key, value in model.state_dict().items():                    # EMA: one more lerp
        torch.testing.assert_close(ema.shadow[key], 0.5 * shadow_before[key] + 0.5 * value)


def test_skipped_step_leaves_weights_unchanged():
    batches = [_data(2, 0), {**_data(2, 1), "poison": torch.ones(2, dtype=torch.bool)}]
    model = Linear()
    loop = _loop(model, batches, max_steps=1, report_every=1).run()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop.settings = LoopSettings(max_steps=2, report_every=1)
    loop.run()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert loop.skipped_steps == 1 and loop.step == 2


def test_cadence_and_resume_from_a_step():
    recorder = Recorder()
    settings = {"max_steps": 7, "report_every": 2, "checkpoint_every": 3, "validate_every": 4}
    _loop(Linear(), itertools.repeat(_data(2)), callbacks=[recorder], **settings).run()
    assert recorder.kinds("report") == [2, 3, 4, 6, 7]
    assert recorder.kinds("checkpoint") == [3, 6, 7]                  # and at the last step
    assert recorder.kinds("validate") == [4]
    assert recorder.events[0] == ("start", 0) and recorder.events[-1] == ("end", 7)
    flags = {event[1]: event[2] for event in recorder.events if event[0] == "report"}
    assert flags == {2: False, 3: True, 4: False, 6: True, 7: True}
    report = {event[1]: event[3] for event in recorder.events if event[0] == "report"}
    assert report[4]["val_metric"] == 4.0 and "val_metric" not in report[2]
    assert {"loss", "lr", "grad_norm", "skipped_steps", "tokens_per_s", "step_s", "step",
            "samples_seen", "world_size"} <= set(report[2])
    assert report[7]["samples_seen"] == 14 and report[7]["world_size"] == 1
    order = [event[0] for event in recorder.events if event[1] == 6]
    assert order == ["report", "checkpoint"]

    resumed = Recorder()
    loop = _loop(Linear(), itertools.repeat(_data(2)), callbacks=[resumed], **settings)
    loop.step, loop.samples_seen = 3, 6
    loop.run()
    assert resumed.kinds("report") == [4, 6, 7] and resumed.kinds("checkpoint") == [6, 7]
    assert resumed.kinds("validate") == [4] and loop.samples_seen == 14


def test_settings_from_train_config():
    config = TrainConfig.from_dict({"run": {"max_steps": 9, "grad_accumulation": 2, "report_every": 3,
                                            "checkpoint_every": 4, "validate_every": 2},
                                    "optimizer": {"grad_clip_norm": None}})
    settings = LoopSettings.from_config(config)
    assert (settings.max_steps, settings.grad_accumulation, settings.report_every) == (9, 2, 3)
    assert settings.checkpoint_every == 4 and settings.grad_clip_norm is None
    assert settings.validate_every is None                          # no validation data
    with pytest.raises(ValueError, match="report_every"):
        LoopSettings(max_steps=1, report_every=0)


# ---------------------------------------------------------------------------- run.callbacks


def test_callbacks_extension_point_loads_the_test_fault(tmp_path):
    marker = tmp_path / "failed"
    config = load_train_config("name: x\n", [
        f"run.callbacks=[{{path: '{FAIL_ONCE}', options: {{step: 1, marker: '{marker}'}}}}]"])
    assert config.run.callbacks == (CallbackSpec(path=FAIL_ONCE, options={"step": 1, "marker": str(marker)}),)
    model = Linear()
    loop = _loop(model, itertools.repeat(_data(2)), callbacks=load_callbacks(config.run.callbacks))
    with pytest.raises(InjectedFailure, match="step 1"):
        loop.run()
    assert marker.read_text() == "1" and loop.step == 1
    loop.run()                                                       # fires once only
    assert loop.step == 3


def test_callbacks_errors_and_no_test_hooks_in_the_product_config():
    with pytest.raises(ValueError, match=r"run.callbacks\[0\].*cannot be imported"):
        load_callbacks([CallbackSpec(path="tests.jobs.no_such_module:Thing")])
    with pytest.raises(ValueError, match="not a TrainCallback"):
        load_callbacks([CallbackSpec(path="collections:OrderedDict")])
    with pytest.raises(ValueError, match="fail_once_at_step"):
        load_train_config("name: x\n", ["run.fail_once_at_step=3"])


# ---------------------------------------------------------------------------- the tiny model


@functools.cache
def _sample(name: str, crop: int | None):
    path = STRUCTURES / f"{name}.cif"
    featurized = featurize_job(job_from_structure_file(path.read_text(), source=str(path)),
                               crop=None if crop is None else CropSettings(size=crop))
    return training_sample(featurized)


class TrunkDistogram(nn.Module):
    """A deterministic step on the tiny model: one trunk cycle (eval mode: no dropout) and
    the SI 4.4 distogram loss, mean over the batch. Randomness-free, so accumulated
    micro-batches must give the gradient of the batch they make up."""

    def __init__(self, model: AlphaFold3) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, batch, generator):
        trunk = self.model.run_trunk(batch, n_cycle=1)
        logits = self.model.distogram_head(trunk.z)
        loss = distogram_loss(logits, batch["gt_coords"], batch["gt_mask"], batch,
                              self.model.config.confidence).mean()
        return loss, {"distogram": float(loss.detach())}


def _tiny_loop(step: nn.Module, model: AlphaFold3, batches, **settings) -> TrainLoop:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return TrainLoop(step, model=model, params=[p for p in model.parameters() if p.requires_grad],
                     optimizer=optimizer, batches=iter(batches),
                     generator=torch.Generator().manual_seed(0),
                     settings=LoopSettings(grad_clip_norm=None, report_every=1, **settings))


def test_tiny_model_accumulation_equals_the_padded_batch():
    samples = [_sample("1l2y", None), _sample("102m", 24)]
    singles = [collate([s], token_buckets=None, atom_buckets=None) for s in samples]
    both = collate(samples, token_buckets=None, atom_buckets=None)
    deltas = []
    for batches, accumulation in (([both], 1), (singles, 2)):
        torch.manual_seed(0)
        model = AlphaFold3(ModelConfig.tiny())
        start = {k: v.clone() for k, v in model.state_dict().items()}
        # two steps: zero-initialised output layers pass gradients upstream from step 2 on
        _tiny_loop(TrunkDistogram(model), model, batches * 2, max_steps=2,
                   grad_accumulation=accumulation).run()
        deltas.append({k: v - start[k] for k, v in model.state_dict().items()})
    moved = [k for k, v in deltas[0].items() if v.abs().max() > 0]
    assert len(moved) > 20 and any(k.startswith("pairformer") for k in moved)
    for key in moved:
        torch.testing.assert_close(deltas[1][key], deltas[0][key], rtol=1e-3, atol=1e-5)


def test_tiny_model_trains_two_real_steps_with_ema_and_reports():
    config = TrainConfig.from_dict({"model": {"preset": "tiny"}, "optimizer": {"warmup_steps": 0},
                                    "run": {"max_steps": 2, "report_every": 1}})
    torch.manual_seed(0)
    parts = build_parts(config, config.model.build(), device=torch.device("cpu"))
    step = TrainStepModule(parts.model, runtime=config.runtime(), loss=config.loss_config(parts.model_config),
                           diffusion_batch=2, n_cycle=1)
    batch = collate([_sample("1l2y", None)], token_buckets=None, atom_buckets=None)
    start = {k: v.clone() for k, v in parts.ema.shadow.items()}
    recorder = Recorder()
    TrainLoop(step, model=parts.model, params=parts.trainable, optimizer=parts.optimizer,
              scheduler=parts.scheduler, ema=parts.ema, batches=itertools.repeat(batch),
              generator=torch.Generator().manual_seed(0), settings=LoopSettings.from_config(config),
              callbacks=[recorder]).run()
    reports = [event[3] for event in recorder.events if event[0] == "report"]
    assert [r["step"] for r in reports] == [1, 2]
    assert all(r["loss"] > 0 and r["diffusion"] >= 0 and r["skipped_steps"] == 0.0 for r in reports)
    moved = [k for k, v in parts.ema.shadow.items() if not torch.equal(v, start[k])]
    assert moved                                                     # the EMA followed the weights
    weights = parts.model.state_dict()
    assert all(not torch.equal(parts.ema.shadow[k], weights[k]) for k in moved[:5])  # decay 0.999
