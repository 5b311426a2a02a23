"""Checkpoint round trip: model, EMA, Adam, LR schedule, step, RNG, config; no pickled code.
Verification: a manifest of sizes and SHA-256 hashes written last; truncated, overwritten,
non-finite or manifest-less checkpoints are refused with a CheckpointError (never a reader's
own exception) and leave the model untouched; the newest valid checkpoint is picked."""

import contextlib
import copy
import json
import shutil

import pytest
import torch

from foldray.io.weights import load_weights, save_weights
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


def _save(folder, model, ema, optimizer, scheduler, *, step=2, rank=0, generator=None):
    """What the train worker does: shared files, the rank's rng, the manifest last."""
    entries = ckpt.save_checkpoint(
        str(folder), model=model, model_config=CONFIG, ema=ema.state_dict(), optimizer=optimizer,
        scheduler=scheduler, state=ckpt.TrainerState(step=step, samples_seen=2 * step, world_size=1,
                                                     config={}))
    entries.update(ckpt.save_rng(str(folder), rank, generator or torch.Generator().manual_seed(step)))
    ckpt.write_manifest(str(folder), step=step, entries=entries)


def test_round_trip_restores_everything(tmp_path):
    model, ema, optimizer, scheduler = _trained()
    generator = torch.Generator().manual_seed(11)
    torch.rand(3, generator=generator)
    state = ckpt.TrainerState(step=2, samples_seen=8, world_size=2, config=TrainConfig().to_dict())
    entries = ckpt.save_checkpoint(str(tmp_path), model=model, model_config=CONFIG, ema=ema.state_dict(),
                                   optimizer=optimizer, scheduler=scheduler, state=state)
    entries.update(ckpt.save_rng(str(tmp_path), 1, generator))
    ckpt.write_manifest(str(tmp_path), step=2, entries=entries)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ema.safetensors", "manifest.json", "model.safetensors", "optimizer.pt", "rng-rank1.pt",
        "trainer_state.json"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["step"] == 2 and set(manifest["files"]) == set(entries)
    assert manifest["files"]["model.safetensors"]["finite"] is True
    assert manifest["files"]["optimizer.pt"]["size"] == (tmp_path / "optimizer.pt").stat().st_size
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
    _save(tmp_path, model, ema, optimizer, scheduler)
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
    _save(tmp_path, model, ema, optimizer, scheduler)
    torch.save({"optimizer": Evil(), "scheduler": {}}, tmp_path / "optimizer.pt")
    _rehash(tmp_path, "optimizer.pt")          # the manifest agrees: torch.load itself must refuse
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer.pt cannot be read with torch.load\(weights_"):
        ckpt.restore_checkpoint(str(tmp_path), model=model, ema=ema, optimizer=optimizer,
                                scheduler=scheduler)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model, ema, optimizer, scheduler = _trained()
    _save(tmp_path, model, ema, optimizer, scheduler)
    other = AlphaFold3(ModelConfig.from_dict({**CONFIG.to_dict(), "n_cycle": 3}))
    with pytest.raises(ValueError, match="differs"):
        ckpt.restore_checkpoint(str(tmp_path), model=other, ema=ema, optimizer=optimizer,
                                scheduler=scheduler)


# ---------------------------------------------------------------------------- verification


def _rehash(folder, name):
    """What a bug or an attacker could do: make the manifest match a changed file."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][name].update(ckpt.file_entry((folder / name).read_bytes()))
    path.write_text(json.dumps(manifest))


def _with_nan(path):
    """Rewrite a weights file (same metadata, same size) with one NaN in its first float tensor."""
    weights, config = load_weights(str(path))
    first = next(k for k, v in sorted(weights.items()) if v.is_floating_point())
    weights[first].view(-1)[0] = float("nan")
    meta = {ckpt.STEP_KEY: "2"}
    save_weights(str(path), weights, config, meta)
    return first


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def trained():
    return _trained()


@pytest.fixture(scope="module")
def fresh():
    """Restored into by the tests below (a refusal must leave it as it was)."""
    return _trained(seed=5)


@pytest.fixture(scope="module")
def pristine(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine")
    _save(folder, *trained)
    return folder


@pytest.fixture
def saved(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture
def refused(fresh):
    """refused(folder, match): restoring into a fresh model is refused with a CheckpointError
    that names the folder, and leaves the model as it was."""
    def check(folder, match):
        model, ema, optimizer, scheduler = fresh
        before = ckpt.param_checksum(model.state_dict())
        with pytest.raises(ckpt.CheckpointError, match=match) as err:
            ckpt.restore_checkpoint(str(folder), model=model, ema=ema, optimizer=optimizer,
                                    scheduler=scheduler)
        assert ckpt.param_checksum(model.state_dict()) == before
        assert str(folder) in str(err.value)
        return err.value
    return check


def test_truncated_model_file_is_refused(saved, refused):
    _truncate(saved / "model.safetensors")
    err = refused(saved, r"model.safetensors size \d+ != \d+ in the manifest \(truncated")
    assert err.reason.startswith("model.safetensors size")


def test_truncated_model_file_with_a_matching_manifest_is_a_clear_error(saved, refused):
    _truncate(saved / "model.safetensors")
    _rehash(saved, "model.safetensors")
    refused(saved, "model.safetensors: not a readable safetensors file")


def test_nan_overwritten_weights_fail_the_old_manifest_hash(saved, refused):
    size = (saved / "model.safetensors").stat().st_size
    _with_nan(saved / "model.safetensors")
    assert (saved / "model.safetensors").stat().st_size == size      # only the hash can tell
    refused(saved, "model.safetensors sha256 mismatch")


def test_nan_weights_with_a_matching_manifest_fail_the_finite_check(saved, refused):
    name = _with_nan(saved / "ema.safetensors")
    _rehash(saved, "ema.safetensors")
    ckpt.verify_checkpoint(str(saved))                                # the hashes agree ...
    refused(saved, rf"ema.safetensors has non-finite values in 1 tensor\(s\) \(first {name}\)")


def test_truncated_optimizer_state_is_refused(saved, refused):
    _truncate(saved / "optimizer.pt")
    refused(saved, r"optimizer.pt size \d+ != \d+ in the manifest")
    _rehash(saved, "optimizer.pt")                                    # the manifest agrees: still clear
    refused(saved, r"optimizer.pt cannot be read with torch.load\(weights_only=True\) \(\w+\)")


def test_checkpoint_without_manifest_is_incomplete(saved, refused):
    (saved / "manifest.json").unlink()
    refused(saved, r"no manifest.json \(incomplete checkpoint\)")
    (saved / "manifest.json").write_text('{"format": "something-else"}')
    refused(saved, "manifest.json is damaged or of an unknown format")


def test_a_missing_listed_file_is_refused(saved, refused):
    (saved / "rng-rank0.pt").unlink()
    refused(saved, "rng-rank0.pt is missing")


def test_manifest_names_only_files_in_its_folder(saved, refused):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"size": 1, "sha256": "0" * 64}
    (saved / "manifest.json").write_text(json.dumps(manifest))
    refused(saved, "manifest.json is damaged")


def test_non_finite_weights_are_not_checkpointed(tmp_path, trained):
    model, ema, optimizer, scheduler = trained
    model = copy.deepcopy(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ckpt.CheckpointError, match="step 2: model weights are not finite"):
        _save(tmp_path, model, ema, optimizer, scheduler)
    assert not list(tmp_path.iterdir())                              # nothing written


def test_fallback_picks_the_newest_complete_checkpoint(tmp_path, trained, fresh):
    model, ema, optimizer, scheduler = trained
    model = copy.deepcopy(model)
    folders = {}
    for step in (2, 4, 6, 8):
        folders[step] = tmp_path / ckpt.dir_name(step)
        _save(folders[step], model, ema, optimizer, scheduler, step=step)
        for p in model.parameters():          # different weights in every checkpoint
            p.data.add_(0.01)
    checksum_4 = ckpt.param_checksum(load_weights(str(folders[4] / "model.safetensors"))[0])
    (folders[8] / "manifest.json").unlink()                           # upload cut short
    _with_nan(folders[6] / "model.safetensors")                       # overwritten since
    newest_first = sorted(folders.values(), key=lambda f: ckpt.dir_order(f.name), reverse=True)
    fresh, fresh_ema, fresh_opt, fresh_sched = fresh
    opened = []

    def restore(folder):
        return ckpt.restore_checkpoint(folder, model=fresh, ema=fresh_ema, optimizer=fresh_opt,
                                       scheduler=fresh_sched)

    def candidates():
        for folder in newest_first:
            opened.append(folder.name)
            yield folder.name, contextlib.nullcontext(str(folder))

    skipped = {}
    name, state = ckpt.restore_first_valid(candidates(), restore, skipped=skipped)
    assert name == "checkpoint_000000004" and state.step == 4
    assert opened == ["checkpoint_000000008", "checkpoint_000000006", "checkpoint_000000004"]  # lazily
    assert ckpt.param_checksum(fresh.state_dict()) == checksum_4
    assert skipped == {"checkpoint_000000008": "no manifest.json (incomplete checkpoint)",
                       "checkpoint_000000006": "model.safetensors sha256 mismatch"}
    assert ckpt.resume_summary(name, skipped) == (
        "checkpoint_000000008: no manifest.json (incomplete checkpoint); checkpoint_000000006: "
        "model.safetensors sha256 mismatch; resumed from checkpoint_000000004")

    shutil.rmtree(folders[4])
    _truncate(folders[2] / "optimizer.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"run 'x' has no usable checkpoint \(checkpoint_0+8: "
                       r".*checkpoint_0+4: no manifest.json .*checkpoint_0+2: optimizer.pt size"):
        ckpt.restore_first_valid(((f.name, contextlib.nullcontext(str(f))) for f in newest_first), restore,
                                 where="run 'x'")


def test_new_checkpoint_names_avoid_refused_folders():
    assert ckpt.dir_name(4) == "checkpoint_000000004"
    assert ckpt.dir_name(4, {"checkpoint_000000004", "checkpoint_000000004-1"}) == "checkpoint_000000004-2"
    names = ["checkpoint_000000004-1", "checkpoint_000000010", "checkpoint_000000004", "checkpoint_000000002"]
    assert sorted(names, key=ckpt.dir_order) == [
        "checkpoint_000000002", "checkpoint_000000004", "checkpoint_000000004-1", "checkpoint_000000010"]
    assert ckpt.dir_order("foldray") is None and ckpt.dir_order("checkpoint_2024-01-01") is None


def test_init_weights_are_verified_when_a_manifest_is_present(saved, tmp_path_factory):
    ckpt.load_init_weights(str(saved))                                # intact: fine
    _with_nan(saved / "ema.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="ema.safetensors sha256 mismatch"):
        ckpt.load_init_weights(str(saved))
    with pytest.raises(ckpt.CheckpointError, match="ema.safetensors sha256 mismatch"):
        ckpt.load_init_weights(str(saved / "ema.safetensors"))       # the file, named directly
    raw, _ = ckpt.load_init_weights(str(saved), use_ema=False)       # the model file is intact
    assert raw
    # an imported weights file has no manifest: accepted as it is, but never with NaNs
    imported = tmp_path_factory.mktemp("imported") / "weights.safetensors"
    shutil.copy(saved / "model.safetensors", imported)
    weights, _ = ckpt.load_init_weights(str(imported))
    assert ckpt.param_checksum(weights) == ckpt.param_checksum(raw)
    _with_nan(imported)
    with pytest.raises(ckpt.CheckpointError, match="weights.safetensors has non-finite values"):
        ckpt.load_init_weights(str(imported))


def test_driver_precheck_stops_a_run_whose_every_checkpoint_is_unusable(pristine, tmp_path):
    """`resumable_problem` (jobs/train.py, before fit): a run resumes if any checkpoint
    is complete at its manifest sizes; with every one truncated or unfinished it is one
    message naming each, instead of every worker retry refusing the same files."""
    run = tmp_path / "run"
    assert ckpt.resumable_problem(str(run)) is None                 # a new run
    run.mkdir()
    assert ckpt.resumable_problem(str(run)) is None                 # no checkpoint yet
    shutil.copytree(pristine, run / "checkpoint_000000001")
    shutil.copytree(pristine, run / "checkpoint_000000002")
    assert ckpt.resumable_problem(str(run)) is None
    _truncate(run / "checkpoint_000000002" / "model.safetensors")
    assert ckpt.resumable_problem(str(run)) is None                 # the older one still serves
    (run / "checkpoint_000000001" / "manifest.json").unlink()       # crashed before its manifest
    problem = ckpt.resumable_problem(str(run))
    assert problem is not None and problem.startswith(f"{run} has no usable checkpoint")
    assert "checkpoint_000000002: model.safetensors size" in problem
    assert "checkpoint_000000001: no manifest.json (incomplete checkpoint)" in problem
