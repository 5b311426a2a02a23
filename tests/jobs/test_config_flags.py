"""One flag vocabulary across commands: --model-config, --config (own file), --set, runtime group."""

from __future__ import annotations

import dataclasses
import json

import pytest

from foldray.jobs import cli
from foldray.jobs.options import resolve_model_and_runtime
from foldray.model.config import ModelConfig, RuntimeConfig
from tests.data_paths import REPO

TINY_TRAIN = str(REPO / "configs" / "tiny_cpu.yaml")


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["predict", "predict-batch", "featurize", "serve", "train", "msa",
                                     "import-weights"])
def test_every_command_takes_set(command):
    options: dict[str, list[str]] = {}
    for sub in cli.build_parser()._subparsers._group_actions:
        for action in sub.choices[command]._actions:
            options.setdefault(action.dest, []).extend(action.option_strings)
    assert options["set"] == ["--set"]
    if command != "msa":
        assert "--model-config" in options["model_config"]


def test_predict_model_and_runtime_from_flags_and_set():
    args = parse("predict", "x.json", "--out", "o", "--model-config", "tiny_protenix",
                 "--set", "model.n_cycle=1", "--set", "runtime.chunk_size=8", "--precision", "bf16")
    model, runtime = resolve_model_and_runtime(args)
    assert model == dataclasses.replace(ModelConfig.tiny_protenix(), n_cycle=1)
    assert runtime == RuntimeConfig(precision="bf16", chunk_size=8)
    plain = parse("predict", "x.json", "--out", "o", "--config", "tiny_openfold3")   # old spelling
    assert resolve_model_and_runtime(plain) == ("tiny-openfold3", RuntimeConfig())


def test_predict_model_config_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("preset: tiny\ndiffusion: {n_step: 3}\n")
    model, _ = resolve_model_and_runtime(parse("predict", "x", "--out", "o", "--model-config", str(path)))
    assert model.diffusion.n_step == 3 and model.pairformer == ModelConfig.tiny().pairformer


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "model.n_cyle=1"], "model.n_cyle: unknown key (did you mean 'n_cycle'?"),
    (["--set", "runtime.kernels=cuda"], "runtime.kernels: 'cuda' is not one of"),
    (["--set", "n_sample=1"], "n_sample: --set takes model.<field> or runtime.<field> here"),
    (["--model-config", "small"], "unknown model preset 'small'"),
])
def test_predict_bad_settings_are_one_error_line(argv, message, tmp_path, capsys):
    code = cli.main(["predict", str(tmp_path / "none.json"), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err


def test_train_takes_set_model_config_and_old_positionals(capsys):
    code = cli.main(["train", "--config", TINY_TRAIN, "--model-config", "tiny_protenix",
                     "--set", "run.max_steps=3", "optimizer.lr=1e-4", "--print-config"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["model"]["preset"] == "tiny_protenix"
    assert printed["run"]["max_steps"] == 3 and printed["optimizer"]["lr"] == 1e-4


def test_train_model_config_file_is_exact(tmp_path, capsys):
    from foldray.training.config import load_train_config

    path = tmp_path / "model.json"
    path.write_text(json.dumps(ModelConfig.tiny_openfold3().to_dict()))
    assert cli.main(["train", "--config", TINY_TRAIN, "--model-config", str(path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    config = load_train_config(TINY_TRAIN, [f"model={json.dumps(json.loads(printed)['model'])}"])
    assert config.model.build() == ModelConfig.tiny_openfold3()


def test_train_errors_name_file_and_key(capsys):
    assert cli.main(["train", "--config", TINY_TRAIN, "--set", "run.max_stepz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {TINY_TRAIN}: run.max_stepz: unknown key") and "\n" not in err


def test_import_weights_set_needs_model_config(tmp_path, capsys):
    code = cli.main(["import-weights", "--from", "openfold3", str(tmp_path / "x.pt"), "--out",
                     str(tmp_path / "y.safetensors"), "--set", "n_cycle=2"])
    assert code == 2 and "--set needs --model-config" in capsys.readouterr().err


def test_serve_runtime_flags_become_runtime_settings():
    from foldray.jobs.serve import app_settings
    from foldray.serve_config import load_serve_config

    args = parse("serve", "--precision", "bf16", "--kernels", "torch", "--chunk-size", "32",
                 "--insecure-no-auth")
    app_args, _ = app_settings(args)
    config = load_serve_config(app_args)
    assert config.runtime == RuntimeConfig(precision="bf16", kernels="torch", chunk_size=32)
    assert load_serve_config(app_settings(parse("serve", "--insecure-no-auth"))[0]).runtime == RuntimeConfig()


def test_serve_model_config_file_is_read_once_and_served(tmp_path):
    """`foldray serve --model-config FILE` (issue 18): the file goes through predict's loader,
    the settings carry its resolved mapping (replicas never open it), and the model replica
    builds exactly that model."""
    from foldray.actors.serve_deployments import Model
    from foldray.jobs.serve import app_settings
    from foldray.serve_config import load_serve_config

    path = tmp_path / "m.yaml"
    path.write_text("preset: tiny\ndiffusion: {n_step: 3}\npairformer: {n_block: 1}\n")
    expected, _ = resolve_model_and_runtime(parse("predict", "x", "--out", "o", "--model-config", str(path)))
    flags = parse("serve", "--model-config", str(path), "--insecure-no-auth")
    config = load_serve_config(app_settings(flags)[0])
    path.unlink()
    assert config.model() == expected and expected.pairformer.n_block == 1
    inline = load_serve_config({"model_config": {"preset": "tiny", "diffusion": {"n_step": 3},
                                                 "pairformer": {"n_block": 1}}})
    assert inline.model() == expected
    model = Model.func_or_class(None, config.model(), "cpu", 1, 0.01, config.runtime)
    assert model.predictor.model.config == expected and model.predictor.random_weights


def test_serve_bad_model_config_file_is_one_located_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ndiffusion: {n_stp: 3}\n")
    assert cli.main(["serve", "--model-config", str(bad), "--insecure-no-auth"]) == 2
    err = capsys.readouterr().err
    assert "model_config.diffusion.n_stp: unknown key" in err and "Traceback" not in err
    assert cli.main(["serve", "--model-config", str(tmp_path / "none.json"), "--insecure-no-auth"]) == 2
    assert "model config file not found" in capsys.readouterr().err
