"""DDP around the training step (TrainStepModule) and fine-tune parameter selection."""

import dataclasses
import functools
import socket

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from foldray.features.batch import collate
from foldray.features.pipeline import CropSettings, featurize_job
from foldray.inputs.mmcif_input import job_from_structure_file
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig, RuntimeConfig
from foldray.training import training_sample
from foldray.training.parallel import NON_TRUNK_MODULES, TrainStepModule, select_trainable
from tests.data_paths import STRUCTURES

CONFIG = ModelConfig.tiny()


@functools.cache
def _batch():
    path = STRUCTURES / "1l2y.cif"
    featurized = featurize_job(job_from_structure_file(path.read_text(), source=str(path)),
                               crop=CropSettings(size=16))
    return collate([training_sample(featurized)], token_buckets=None, atom_buckets=None)


@pytest.fixture
def process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _wrapped(find_unused: bool) -> DistributedDataParallel:
    torch.manual_seed(0)
    loss = dataclasses.replace(CONFIG.loss, mini_rollout_steps=2)     # keep the test quick
    module = TrainStepModule(AlphaFold3(CONFIG).train(), runtime=RuntimeConfig(), loss=loss,
                             diffusion_batch=2, n_cycle=1)
    return DistributedDataParallel(module, find_unused_parameters=find_unused)


def _step(ddp: DistributedDataParallel, seed: int) -> None:
    ddp.zero_grad(set_to_none=True)
    loss, metrics = ddp(_batch(), torch.Generator().manual_seed(seed))
    assert set(metrics) >= {"loss", "diffusion"}
    loss.backward()


def test_ddp_step_needs_find_unused_parameters(process_group):
    """No templates -> the template embedder gets no gradient: DDP's reducer must be told,
    or the next iteration fails. With find_unused_parameters the step runs repeatedly and
    the used parameters get gradients through DDP's hooks."""
    ddp = _wrapped(find_unused=True)
    for seed in range(2):
        _step(ddp, seed)
    grads = {n: p.grad for n, p in ddp.module.model.named_parameters()}
    for name, grad in grads.items():
        if name.startswith("template_embedder."):
            assert grad is None or not grad.any(), name
        else:
            assert grad is not None and torch.isfinite(grad).all(), name

    strict = _wrapped(find_unused=False)
    with pytest.raises(RuntimeError, match="(?i)finished reduction|unused parameters"):
        for seed in range(2):
            _step(strict, seed)


def test_select_trainable():
    model = AlphaFold3(CONFIG)
    everything = select_trainable(model)
    assert len(everything) == len(list(model.parameters()))
    heads = select_trainable(model, freeze_trunk=True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(NON_TRUNK_MODULES) and len(heads) < len(everything)
    select_trainable(model, train_modules=("confidence_head",))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"confidence_head"}
    with pytest.raises(ValueError, match="no modules"):
        select_trainable(model, train_modules=("confidence_heads",))
