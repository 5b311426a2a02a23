"""Progress hooks: the model reports every recycle and diffusion step; bars stay off the
output when not on a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import torch

from foldray.features.batch import collate
from foldray.jobs import predict, train, validate
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.progress import StageBars, interactive
from foldray.training.config import load_train_config
from foldray.training.metrics import MetricsLog
from tests.data_paths import BAD_INPUTS, INPUTS, REPO
from tests.model_helpers import featurized_inputs


def test_predict_reports_each_recycle_and_diffusion_step():
    features = featurized_inputs("tiny_protein_ligand_smiles.json")["tiny_protein_ligand_smiles.json"]
    batch = collate([features], token_buckets=None, atom_buckets=None)
    torch.manual_seed(0)
    model = AlphaFold3(ModelConfig.tiny()).eval()
    bars = StageBars(enabled=True, prefix="job: ")
    model.predict(batch, n_sample=1, n_cycle=2, n_step=3, progress=bars,
                  generator=torch.Generator().manual_seed(0))
    assert bars.calls == [("recycle", 1, 2), ("recycle", 2, 2), ("diffusion", 1, 3),
                          ("diffusion", 2, 3), ("diffusion", 3, 3)]
    assert bars.bars == {}                      # finished stages close their bars


def test_bars_are_off_when_quiet_or_not_a_terminal(capsys):
    assert interactive(quiet=True) is False
    assert interactive(quiet=False) is False    # pytest captures stderr: not a terminal
    silent = StageBars(enabled=False)
    silent("diffusion", 1, 2)
    assert silent.bars == {} and capsys.readouterr().err == ""


# --------------------------------------------------------------- jobs and training-step bars

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1"]


class Terminal(io.StringIO):
    """stderr that says it is a terminal: the forced-terminal flag of these tests."""

    def isatty(self) -> bool:
        return True


def run_on_terminal(monkeypatch, main, argv: list[str]) -> tuple[int, str]:
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    code = main(argv)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    return code, term.getvalue()


def test_validate_draws_a_jobs_bar_on_a_terminal_and_none_when_quiet(monkeypatch, capsys):
    inputs = [str(INPUTS / "1l2y.json"), str(INPUTS / "tiny_protein_dna.json"),
              str(BAD_INPUTS / "unknown_ccd_code_ZZZQ.json")]
    code, err = run_on_terminal(monkeypatch, validate.main, inputs)
    assert code == 2
    assert "validate: 100%" in err and "3/3" in err and "1 invalid" in err
    assert "error: " in err                          # the error line is printed above the bar
    assert capsys.readouterr().out.count("ok: ") == 2
    code, err = run_on_terminal(monkeypatch, validate.main, [*inputs, "--quiet"])
    assert code == 2 and "validate:" not in err and "3/3" not in err and "error: " in err


def test_predict_draws_jobs_and_stage_bars_on_a_terminal_and_none_when_quiet(monkeypatch, tmp_path,
                                                                           capsys):
    inputs = [str(INPUTS / "1l2y.json"), str(INPUTS / "tiny_protein_ligand_smiles.json")]
    code, err = run_on_terminal(monkeypatch, predict.main, [*inputs, "--out", str(tmp_path), *FAST])
    assert code == 0
    assert "jobs: 100%" in err and "2/2" in err and "2 ok, 0 skipped, 0 failed" in err
    assert "1l2y: diffusion" in err and "1l2y: recycle" in err   # per-job stage bars
    assert capsys.readouterr().out.count("ok: ") == 2
    code, err = run_on_terminal(monkeypatch, predict.main,
                                [*inputs, "--out", str(tmp_path), *FAST, "--quiet"])
    assert code == 0 and "jobs:" not in err and "diffusion" not in err


def test_no_bars_when_stderr_is_a_pipe(tmp_path):
    result = subprocess.run([sys.executable, "-m", "foldray.jobs.validate", str(INPUTS / "1l2y.json")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and result.stdout.startswith("ok: ")
    assert "validate:" not in result.stderr and "\r" not in result.stderr


def test_train_step_bar_follows_the_metrics_rank_0_writes(monkeypatch, tmp_path):
    """The driver's bar reads the real metrics file while a writer (rank 0's MetricsLog) appends."""
    config = load_train_config(str(REPO / "configs" / "tiny_cpu.yaml"),
                               [f"run.storage_path={tmp_path}", "run.max_steps=20"])
    log = MetricsLog(train.metrics_url(config), resume_step=0)

    def write_steps() -> None:
        for step in range(5, 21, 5):
            log.append({"step": step, "loss": 10.0 / step})
            time.sleep(0.15)

    for enabled, term in ((True, Terminal()), (False, Terminal())):
        monkeypatch.setattr(sys, "stderr", term)
        writer = threading.Thread(target=write_steps)
        with train.step_bar(config, enabled=enabled, every_s=0.05):
            writer.start()
            writer.join()
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        if enabled:
            assert "train tiny-cpu: 100%" in term.getvalue() and "20/20" in term.getvalue()
            assert "loss 0.5" in term.getvalue()
        else:
            assert term.getvalue() == ""
