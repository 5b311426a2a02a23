"""Checkpoint round trip: model, EMA, Adam, LR schedule, step, RNG, config; no pickled code."""

import json

import pytest
import torch

from foldray.io.weights import load_weights
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.training import checkpoint as ckpt
from foldray.training.config import OptimizerConfig, TrainConfig
from foldray.training.optim import Ema, make_optimizer

CONFIG = ModelConfig.tiny()
OPT = OptimizerConfig(warmup_steps=3)


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = AlphaFold3(CONFIG)
    ema = Ema(model, 0.9)
    optimizer, scheduler = make_optimizer(model.parameters(), OPT)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        scheduler.step()
        ema.update(model)
    return model, ema, optimizer, scheduler


def test_round_trip_restores_everything(tmp_path):
    model, ema, optimizer, scheduler = _trained()
    generator = torch.Generator().manual_seed(11)
    torch.rand(3, generator=generator)
    state = ckpt.TrainerState(step=2, samples_seen=8, world_size=2, config=TrainConfig().to_dict())
    ckpt.save_checkpoint(str(tmp_path), model=model, model_config=CONFIG, ema=ema.state_dict(),
                         optimizer=optimizer, scheduler=scheduler, state=state)
    ckpt.save_rng(str(tmp_path), 1, generator)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.pt", "rng-rank1.pt", "trainer_state.json"]
    assert json.loads((tmp_path / "trainer_state.json").read_text())["step"] == 2

    fresh, fresh_ema, fresh_opt, fresh_sched = _trained(seed=5)     # different everything
    restored = ckpt.restore_checkpoint(str(tmp_path), model=fresh, ema=fresh_ema,
                                       optimizer=fresh_opt, scheduler=fresh_sched)
    assert restored == state
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for key, value in ema.state_dict().items():
        assert torch.equal(value, fresh_ema.state_dict()[key]), key
    adam_a, adam_b = optimizer.state_dict(), fresh_opt.state_dict()
    assert adam_a["param_groups"] == adam_b["param_groups"]
    for i, s in adam_a["state"].items():
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s[k], adam_b["state"][i][k])
    assert fresh_sched.last_epoch == scheduler.last_epoch == 2
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    # the next step continues identically
    for opt, sch in ((optimizer, scheduler), (fresh_opt, fresh_sched)):
        opt.step()
        sch.step()
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()

    other = torch.Generator().manual_seed(0)
    assert ckpt.restore_rng(str(tmp_path), 1, other)
    assert torch.equal(torch.rand(4, generator=other), torch.rand(4, generator=generator))
    assert not ckpt.restore_rng(str(tmp_path), 0, other)           # rank 0 wrote none


def test_ema_file_is_a_predict_checkpoint_and_init_weights_load(tmp_path):
    model, ema, optimizer, scheduler = _trained()
    ckpt.save_checkpoint(str(tmp_path), model=model, model_config=CONFIG, ema=ema.state_dict(),
                         optimizer=optimizer, scheduler=scheduler,
                         state=ckpt.TrainerState(step=2, samples_seen=2, world_size=1, config={}))
    weights, config = load_weights(str(tmp_path / "ema.safetensors"))   # what `predict` reads
    # as JSON: ModelConfig.from_dict currently returns lists where the dataclass has tuples
    assert json.dumps(config.to_dict()) == json.dumps(CONFIG.to_dict())
    fresh = AlphaFold3(CONFIG)
    fresh.load_state_dict(weights)
    assert json.dumps(ckpt.read_model_config(str(tmp_path)).to_dict()) == json.dumps(CONFIG.to_dict())
    init, _ = ckpt.load_init_weights(str(tmp_path))
    assert ckpt.param_checksum(init) == pytest.approx(ckpt.param_checksum(ema.state_dict()))
    raw, _ = ckpt.load_init_weights(str(tmp_path), use_ema=False)
    assert ckpt.param_checksum(raw) == ckpt.param_checksum(model.state_dict())
    assert ckpt.param_checksum(raw) != ckpt.param_checksum(init)


def test_optimizer_file_is_read_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    model, ema, optimizer, scheduler = _trained()
    ckpt.save_checkpoint(str(tmp_path), model=model, model_config=CONFIG, ema=ema.state_dict(),
                         optimizer=optimizer, scheduler=scheduler,
                         state=ckpt.TrainerState(step=2, samples_seen=2, world_size=1, config={}))
    torch.save({"optimizer": Evil(), "scheduler": {}}, tmp_path / "optimizer.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        ckpt.restore_checkpoint(str(tmp_path), model=model, ema=ema, optimizer=optimizer,
                                scheduler=scheduler)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model, ema, optimizer, scheduler = _trained()
    ckpt.save_checkpoint(str(tmp_path), model=model, model_config=CONFIG, ema=ema.state_dict(),
                         optimizer=optimizer, scheduler=scheduler,
                         state=ckpt.TrainerState(step=2, samples_seen=2, world_size=1, config={}))
    other = AlphaFold3(ModelConfig.from_dict({**CONFIG.to_dict(), "n_cycle": 3}))
    with pytest.raises(ValueError, match="differs"):
        ckpt.restore_checkpoint(str(tmp_path), model=other, ema=ema, optimizer=optimizer,
                                scheduler=scheduler)
