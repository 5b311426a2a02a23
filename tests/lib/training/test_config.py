"""Training config: YAML files in configs/, overrides, SI Table 6 stages, strict keys."""

import dataclasses

import pytest

from foldray.config_loader import ConfigError
from foldray.model.config import LossConfig, ModelConfig
from foldray.training.config import STAGES, TrainConfig, load_train_config
from tests.data_paths import REPO

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", ["tiny_cpu", "initial_training", "finetune"])
def test_shipped_configs_load(name):
    config = load_train_config(str(CONFIGS / f"{name}.yaml"))
    assert config.data.train and config.run.max_steps > 0
    assert TrainConfig.from_dict(config.to_dict()) == config          # round trip


def test_initial_training_is_si_stage_one():
    config = load_train_config(str(CONFIGS / "initial_training.yaml"))
    assert config.model.build() == ModelConfig.full()
    assert config.stage.resolved_crop_size() == 384 and config.stage.resolved_diffusion_batch() == 48
    o = config.optimizer
    assert (o.lr, o.beta1, o.beta2, o.eps, o.warmup_steps, o.decay_factor, o.decay_every,
            o.grad_clip_norm, o.ema_decay) == (1.8e-3, 0.9, 0.95, 1e-8, 1000, 0.95, 50_000, 10.0, 0.999)
    assert config.loss_config(ModelConfig.full()) == dataclasses.replace(LossConfig(), diffusion_batch=48)
    # the SI batch of 256 structures
    assert config.scaling.num_workers * config.data.batch_size * config.run.grad_accumulation == 256


def test_stage_presets_follow_table_6():
    base = LossConfig()
    assert [STAGES[s].crop_size for s in STAGES] == [384, 640, 768, 768]
    assert [STAGES[s].diffusion_batch for s in STAGES] == [48, 32, 32, 32]
    ft1 = load_train_config("stage: {name: finetune1}\n").loss_config(ModelConfig.full())
    assert (ft1.alpha_bond, ft1.alpha_smooth_lddt, ft1.alpha_pae, ft1.diffusion_batch) == (1.0, 0.0, 0.0, 32)
    ft3 = load_train_config("stage: {name: finetune3}\n").loss_config(ModelConfig.full())
    assert (ft3.alpha_pae, ft3.alpha_diffusion, ft3.alpha_distogram) == (1.0, 0.0, 0.0)
    assert ft3.alpha_confidence == base.alpha_confidence
    explicit = load_train_config("stage: {name: finetune3, crop_size: 64, loss: {alpha_pae: 0.5}}\n")
    assert explicit.stage.resolved_crop_size() == 64
    assert explicit.loss_config(ModelConfig.full()).alpha_pae == 0.5


def test_overrides_and_model_overrides():
    config = load_train_config(str(CONFIGS / "tiny_cpu.yaml"), [
        "run.max_steps=7", "optimizer.lr=1e-4", "scaling.num_workers=3",
        "model.overrides={pairformer.n_block: 1}", "data.train=[{path: /x, names: [a, b]}]"])
    assert config.run.max_steps == 7 and config.optimizer.lr == 1e-4      # "1e-4" is a float
    assert config.scaling.num_workers == 3
    assert config.model.build().pairformer.n_block == 1
    assert config.data.train[0].path == "/x" and config.data.train[0].names == ("a", "b")


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("optimiser: {lr: 1}\n", [], "did you mean 'optimizer'"),
    ("", ["run.max_stepz=3"], "run.max_stepz: unknown key"),
    ("stage: {name: stage9}\n", [], "not one of"),
    ("run: {max_steps: ten}\n", [], "expected int"),
    ("model: {overrides: {pairformer.n_blok: 1}}\n", [], "model.overrides.pairformer.n_blok: unknown key"),
    ("model: {preset: small}\n", [], "model.preset: unknown model preset 'small'"),
    ("", ["run.max_steps"], "key=value"),
    ("finetune: {freeze_trunk: true, train_modules: [confidence_head]}\n", [], "not both"),
    ("stage: {loss: {alpha_nothing: 1.0}}\n", [], None),
])
def test_bad_configs_are_rejected(text, overrides, message):
    with pytest.raises(ValueError, match=message):
        config = load_train_config(text or "name: x\n", overrides)
        config.loss_config(ModelConfig.tiny())


@pytest.mark.parametrize("preset", ["tiny", "full", "tiny-openfold3", "tiny_protenix", "full_openfold3"])
def test_every_model_preset_trains(preset):
    config = load_train_config(f"model: {{preset: {preset}, overrides: {{n_cycle: 1}}}}\n")
    assert config.model.build() == dataclasses.replace(ModelConfig.preset(preset), n_cycle=1)


def test_model_overrides_merge_into_the_preset():
    config = load_train_config("model: {preset: tiny_protenix, overrides: {pairformer: {n_block: 1}}}\n")
    built = config.model.build()
    assert built.pairformer.n_block == 1
    assert built.pairformer.n_head == ModelConfig.tiny_protenix().pairformer.n_head


def test_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run: {max_steps: ten}\n")
    with pytest.raises(ConfigError) as caught:
        load_train_config(str(path))
    assert str(caught.value) == f"{path}: run.max_steps: expected int, got 'ten'"
    path.write_text("scaling: {num_workers: 0}\n")
    with pytest.raises(ConfigError, match="scaling.num_workers: must be >= 1"):
        load_train_config(str(path))


def test_stage_loss_values_keep_their_loss_config_types():
    loss = load_train_config("stage: {loss: {mini_rollout_steps: 4, alpha_pae: 1}}\n").loss_config(
        ModelConfig.tiny())
    assert loss.mini_rollout_steps == 4 and isinstance(loss.mini_rollout_steps, int)   # a step count
    assert loss.alpha_pae == 1.0 and isinstance(loss.alpha_pae, float)


def test_run_runtime_is_the_predict_and_serve_runtime_config():
    """Training runs the model through the same RuntimeConfig (same keys) as predict/serve;
    configs and checkpoints written with run.precision / chunk_size / checkpoint_activations
    keep loading into it (issue 18)."""
    from foldray.model.config import RuntimeConfig

    assert TrainConfig().run.runtime == RuntimeConfig(precision="bf16") == TrainConfig().runtime()
    new = load_train_config("run: {runtime: {precision: fp32, chunk_size: 8, checkpoint_activations: true, "
                            "kernels: torch, compile: true, diffusion_chunk: 2}}\n")
    assert new.runtime() == RuntimeConfig(precision="fp32", chunk_size=8, checkpoint_activations=True,
                                          kernels="torch", compile=True, diffusion_chunk=2)
    old = load_train_config("run: {precision: fp32, chunk_size: 8, checkpoint_activations: true}\n")
    assert old.runtime() == RuntimeConfig(precision="fp32", chunk_size=8, checkpoint_activations=True)
    saved = old.to_dict()                              # a checkpoint's config from before
    saved["run"] = {**{k: v for k, v in saved["run"].items() if k != "runtime"},
                    "precision": "fp32", "chunk_size": 8, "checkpoint_activations": True}
    assert TrainConfig.from_dict(saved) == old
    overridden = load_train_config(str(CONFIGS / "initial_training.yaml"), ["run.precision=fp32"])
    assert overridden.runtime() == RuntimeConfig(precision="fp32", checkpoint_activations=True)
    with pytest.raises(ConfigError, match="given twice") as err:
        load_train_config("run: {precision: bf16, runtime: {precision: fp32}}\n")
    assert err.value.key == "run.precision"
    with pytest.raises(ConfigError, match="did you mean 'precision'") as err:
        load_train_config("run: {runtime: {precison: fp32}}\n")
    assert err.value.key == "run.runtime.precison"


def test_train_runtime_flags_and_compile_reach_the_model(capsys):
    import copy
    import json

    import torch

    from foldray.jobs import cli
    from foldray.training.loop import build_parts

    assert cli.main(["train", "--config", str(CONFIGS / "tiny_cpu.yaml"), "--precision", "bf16",
                     "--chunk-size", "8", "--compile", "--print-config"]) == 0
    runtime = json.loads(capsys.readouterr().out)["run"]["runtime"]
    assert (runtime["precision"], runtime["chunk_size"], runtime["compile"]) == ("bf16", 8, True)
    config = load_train_config(str(CONFIGS / "tiny_cpu.yaml"), ["run.runtime.compile=true"])
    parts = build_parts(config, ModelConfig.tiny(), device=torch.device("cpu"))
    blocks = [m for m in parts.model.modules() if type(m).__name__ == "PairformerBlock"]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    copy.deepcopy(parts.model)    # the EMA validation copy still works
