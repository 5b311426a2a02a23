"""The user guides (docs/*.md) run as written: every block marked runnable is executed.

Each guide's runnable blocks run as one bash script in an empty folder, with the tiny model
on CPU (the guides choose fast settings themselves: `--samples 1`, few steps, small inputs).
Guides that use Ray get the session's real local Ray (loopback, `RAY_AUTH_MODE=disabled`)
through `RAY_ADDRESS`; the object-storage examples get the session's real S3 server
(SeaweedFS) through the `AWS_*` variables and `BUCKET` the batch guide documents. The
last test checks that every runnable block of every guide ran: none is silently skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from foldray.errors import InputError
from tests.data_paths import INPUTS, MSAS, SHARED_DATA, STRUCTURES
from tests.docs.guide_blocks import blocks, guides, runnable, script, unmarked
from tests.plugins.ray_s3 import child_env

SEQDB = SHARED_DATA / "seqdb"
REPO_DOCS = Path(__file__).resolve().parents[2] / "docs"
RAN: set[tuple[str, str]] = set()                 # (guide, block) executed in this session
TESTED_GUIDES = {"prediction.md", "python-api.md", "batch.md", "finetuning.md", "screens.md",
                 "msa.md", "performance.md", "restraints.md"}


def run_guide(guide: str, folder: Path, extra_env: dict[str, str] | None = None,
              timeout: float = 600) -> str:
    """Run a guide's runnable blocks in `folder`; returns stdout. Fails on the first error."""
    path = next(p for p in guides() if p.name == guide)
    env = child_env({"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **(extra_env or {})})
    for key in ("RAY_ADDRESS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "BUCKET"):
        if key not in (extra_env or {}):
            env.pop(key, None)                    # only what the test hands over
    (folder / "guide.sh").write_text(script(path, sys.executable))
    # its own process group: a server a guide starts in the background is stopped with it,
    # even when the guide fails before its own `kill`
    proc = subprocess.Popen(["bash", "guide.sh"], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    ran = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("@@ran ")]
    RAN.update((guide, name) for name in ran)
    assert result.returncode == 0, (f"{guide}: failed after blocks {ran}\n--- stdout\n"
                                    f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}")
    assert ran == [b.name for b in runnable(path)]
    return result.stdout


def ray_env(ray_session) -> dict[str, str]:
    """A driver in a child process joins the session's loopback Ray (see test_predict_batch)."""
    return {"RAY_ADDRESS": "127.0.0.1:" + ray_session.address.rsplit(":", 1)[1],
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_every_code_block_is_runnable_or_says_why_not():
    names = set()
    for path in guides():
        assert not unmarked(path), [f"{path.name}:{b.line}" for b in unmarked(path)]
        for block in blocks(path):
            assert block.skip_reason != "", f"{path.name}:{block.line}: skip needs a reason"
            if block.name:
                assert (path.name, block.name) not in names, f"duplicate block {block.name}"
                names.add((path.name, block.name))
    assert {p.name for p in guides()} <= TESTED_GUIDES, "a new guide needs a test here"
    assert {"prediction.md", "batch.md", "finetuning.md", "screens.md", "python-api.md"} <= \
        {p.name for p in guides()}


def test_prediction_guide(tmp_path):
    out = run_guide("prediction.md", tmp_path)
    job = tmp_path / "predictions" / "trp_cage_atp"
    summary = json.loads((job / "trp_cage_atp_summary_confidences.json").read_text())
    assert summary["chain_ids"] == ["A", "B", "C", "D", "E", "F"]
    assert (job / "seed-1_sample-0").is_dir() and (job / "report" / "report.html").exists()
    assert "exit code 2" in out and "ok: " in out and "my_model.cif" in out
    assert "sequences[2].ligand.ccdCodes[0]" in (tmp_path / "errors.txt").read_text()
    assert (tmp_path / "predictions" / "report" / "index.html").exists()


def test_performance_guide(tmp_path):
    run_guide("performance.md", tmp_path)
    job = tmp_path / "lean" / "tiny_protein_ligand_smiles"
    samples = sorted(p.name for p in job.iterdir() if p.name.startswith("seed-"))
    assert samples == ["seed-1_sample-0", "seed-1_sample-1"]       # --diffusion-chunk 1: both drawn
    summary = json.loads((job / "tiny_protein_ligand_smiles_summary_confidences.json").read_text())
    assert isinstance(summary["ranking_score"], float) and 0.0 <= summary["ptm"] <= 1.0


def test_python_api_guide(tmp_path):
    run_guide("python-api.md", tmp_path)
    assert (tmp_path / "trp_cage_report.html").exists() and (tmp_path / "pae.png").exists()


def test_batch_guide(tmp_path, ray_session, s3_server, s3_bucket):
    env = {**ray_env(ray_session), **s3_server.env(), "BUCKET": s3_bucket}
    out = run_guide("batch.md", tmp_path, env)
    rows = pq.read_table(tmp_path / "batch_out" / "results.parquet").to_pylist()
    assert {r["name"]: r["status"] for r in rows} == {
        "broken": "error", "peptide_1": "ok", "peptide_2": "ok", "tiny_protein_ligand_smiles": "ok"}
    assert "ZZZQ" in next(r["error"] for r in rows if r["name"] == "broken") and "ZZZQ" in out
    assert (tmp_path / "batch_out" / "peptide_1" / "peptide_1_model.cif").exists()
    assert (tmp_path / "batch_out" / "report" / "index.html").exists()
    fs = s3_server.filesystem()
    with fs.open(f"{s3_bucket}/predictions/results.parquet", "rb") as handle:
        remote = pq.read_table(handle).to_pylist()
    assert sorted((r["name"], r["status"]) for r in remote) == [
        ("broken", "ok"), ("peptide_1", "ok"), ("peptide_2", "ok")]
    assert fs.exists(f"{s3_bucket}/predictions/broken/broken_summary_confidences.json")
    assert (tmp_path / "batch_s3_report" / "index.html").exists()


def test_finetuning_guide(tmp_path, ray_session):
    # the guide's prerequisite, "your structures in data/": a few real PDB entries
    for sub, files in (("structures", [STRUCTURES / "1l2y.cif", STRUCTURES / "102m.cif"]),
                       ("msas", [MSAS / "102m_A.a3m"]), ("held_out", [STRUCTURES / "1ubq.cif"])):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for file in files:
            os.symlink(file, tmp_path / "data" / sub / file.name)
    run_guide("finetuning.md", tmp_path, ray_env(ray_session))
    first = [json.loads(line) for line in
             (tmp_path / "runs" / "my-tiny" / "foldray" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in first] == [1, 2] and "val_lddt" in first[-1]
    run = tmp_path / "runs" / "my-finetune"
    start = json.loads((run / "foldray" / "start.json").read_text())
    assert start["resumed"] is False and start["init_checkpoint"].endswith("checkpoint_000000002")
    assert list((tmp_path / "finetuned_predictions").glob("*/*_model.cif"))


def test_screens_guide(tmp_path, ray_session, unused_port):
    from ray import serve

    try:
        run_guide("screens.md", tmp_path, {**ray_env(ray_session), "PORT": str(unused_port)})
    finally:
        serve.shutdown()                  # the guide stops its server; Serve itself goes here
    table = pq.read_table(tmp_path / "screen.parquet").to_pylist()
    assert [r["ligand_id"] for r in table] == ["ibuprofen", "aspirin", "atp"]
    assert {r["status"] for r in table} == {"ok"}
    assert (tmp_path / "screen_report" / "index.html").exists()


def test_msa_guide(tmp_path):
    (tmp_path / "dbs").mkdir()                 # the guide's prerequisite: a protein FASTA database
    os.symlink(SEQDB / "protein_db.fasta", tmp_path / "dbs" / "protein_db.fasta")
    out = run_guide("msa.md", tmp_path)
    job = json.loads((tmp_path / "msa_out" / "myoglobin_data.json").read_text())
    msa = job["sequences"][0]["protein"]["unpairedMsa"]
    assert msa.count(">") > 100 and "ok: " in out      # globin hits from the test database


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_runnable_block_ran():
    """Runs last: each runnable block of each guide was executed by the tests above."""
    expected = {(p.name, b.name) for p in guides() for b in runnable(p)}
    assert expected and expected <= RAN, sorted(expected - RAN)


assert INPUTS.exists(), "the shared test data (../shared/data) is needed"


def _guide_code(guide: str, lang: str) -> list[str]:
    """The guide's ```lang blocks (data examples, not runnable blocks)."""
    text = (REPO_DOCS / guide).read_text()
    return [code for found, code in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if found == lang]


def test_restraints_guide_examples_are_real_inputs():
    """The guide's AF3 JSON example parses, its restraints land on the tokens it names, and the
    refusal it quotes is the one a model without the embedder gives; its Boltz block maps."""
    from foldray.features.constraints import constraint_features, require_constraint_embedder
    from foldray.features.tokenize import tokenize
    from foldray.inputs.af3_json import parse_af3_json
    from foldray.inputs.boltz_yaml import parse_boltz_yaml
    from foldray.model.config import ModelConfig

    job = parse_af3_json(_guide_code("restraints.md", "json")[0], source="pocket.json")[0]
    assert [type(r).__name__ for r in job.restraints] == ["PocketRestraint", "ContactRestraint"]
    tokens = tokenize(job)
    pocket = constraint_features(job, tokens)["constraint_pocket"][..., 0]
    binder = np.array([tokens.chains[c].chain_id == "B" for c in tokens.atom_chain[tokens.centre_atom]])
    assert (pocket[binder][:, [43, 68, 93, 97]] == 6.0).all() and pocket.sum() == 6.0 * 4 * binder.sum()
    with pytest.raises(InputError) as caught:
        require_constraint_embedder(job, ModelConfig.tiny(), "checkpoint weights/foldray.safetensors")
    quoted = " ".join(_guide_code("restraints.md", "")[0].split())
    assert quoted.removesuffix(" ...") in " ".join(f"InputError: {caught.value}".split())

    boltz = ("version: 1\nsequences:\n  - protein: {id: A, sequence: " + "GAVLIKEDRS" * 5 + "}\n"
             "  - ligand: {id: L, smiles: 'CCCCCCO'}\n" + _guide_code("restraints.md", "yaml")[0])
    mapped = parse_boltz_yaml(boltz, source="boltz.yaml").restraints
    assert [(r.max_distance, type(r).__name__) for r in mapped] == [(6.0, "PocketRestraint"),
                                                                      (8.0, "ContactRestraint")]
