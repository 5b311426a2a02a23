"""SI 5.4 schedule, Adam settings, clipping and the SI 5.6 EMA."""

import pytest
import torch
from torch import nn

from foldray.training.config import OptimizerConfig
from foldray.training.optim import Ema, clip_gradients, lr_at, make_optimizer

SI = OptimizerConfig()


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.0),                        # "linearly increased from 0 over the first 1,000 steps"
    (500, 0.9e-3),
    (1000, 1.8e-3),
    (49_999, 1.8e-3),
    (50_000, 1.8e-3 * 0.95),         # x0.95 every 50k steps
    (100_000, 1.8e-3 * 0.95 ** 2),
    (149_999, 1.8e-3 * 0.95 ** 2),
])
def test_si_schedule_values(step, expected):
    assert lr_at(step, SI) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_optimizer_is_si_adam_and_scheduler_follows_lr_at():
    config = OptimizerConfig(warmup_steps=4, decay_every=6)
    model = nn.Linear(3, 2)
    optimizer, scheduler = make_optimizer(model.parameters(), config)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.Adam)
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8
    seen = []
    for _ in range(14):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, config) for s in range(14)])
    assert seen[:5] == pytest.approx([0.0, 0.45e-3, 0.9e-3, 1.35e-3, 1.8e-3])
    assert seen[6] == pytest.approx(1.8e-3 * 0.95) and seen[12] == pytest.approx(1.8e-3 * 0.95 ** 2)


def test_clip_gradients_to_global_norm_ten():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 30.0), torch.full((4,), 40.0)
    norm = clip_gradients([a, b], 10.0)
    assert norm == pytest.approx((3 * 900 + 4 * 1600) ** 0.5)
    total = torch.cat([a.grad, b.grad]).norm()
    assert float(total) == pytest.approx(10.0, rel=1e-5)
    a.grad = torch.full((3,), 1.0)
    b.grad = None
    assert clip_gradients([a, b], 10.0) == pytest.approx(3 ** 0.5)
    assert torch.equal(a.grad, torch.ones(3))                     # under the limit: untouched


def test_ema_update_and_copy():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = Ema(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.bias.fill_(-1.0)
    ema.update(model)                                            # 0.9 * 1 + 0.1 * 3 = 1.2
    torch.testing.assert_close(ema.state_dict()["weight"], torch.full((1, 2), 1.2))
    ema.update(model)                                            # 0.9 * 1.2 + 0.1 * 3 = 1.38
    torch.testing.assert_close(ema.state_dict()["weight"], torch.full((1, 2), 1.38))
    torch.testing.assert_close(ema.state_dict()["bias"], torch.full((1,), -0.19))
    fresh = nn.Linear(2, 1)
    ema.copy_to(fresh)
    torch.testing.assert_close(fresh.weight, torch.full((1, 2), 1.38))
    restored = Ema(nn.Linear(2, 1), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.state_dict()["weight"], ema.state_dict()["weight"])
    with pytest.raises(ValueError):
        Ema(model, decay=1.0)
