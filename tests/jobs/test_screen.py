"""`foldray screen` on a real Ray instance and a real S3 server (SeaweedFS).

Tiny config, 1 sample, 2 diffusion steps, 1 recycle: the point is the pipeline (library
streamed from a bucket, bad SMILES as error rows, resume, SDF poses, the funnel), not the
model. Ligands are real ChEMBL actives from ../shared/data/ligands/screen_100.smi.
"""

import json
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from rdkit import Chem

from foldray.errors import InputError
from foldray.io.results import read_parts
from foldray.jobs.cli import main
from foldray.jobs.screen import read_target
from foldray.screen_library import sdf_records, smi_record, table_columns
from tests.data_paths import INPUTS, LIGANDS

FAST = ["--samples", "1", "--steps", "2", "--recycles", "1", "--num-cpus-per-actor", "0.5",
        "--num-cpus-per-worker", "0.5", "--cpu-workers", "1-1", "--quiet"]
TARGET = str(INPUTS / "1l2y.json")     # Trp-cage, 20 residues
BAD = [("C1CC(N", "bad_paren"), ("c1ccccc", "bad_ring"), ("CC(C)(C)(C)(C)C", "bad_valence")]


def library(count: int, step: int = 2) -> list[tuple[str, str]]:
    """(smiles, id) of every `step`-th ligand of screen_100.smi, `count` of them."""
    lines = (LIGANDS / "screen_100.smi").read_text().splitlines()
    return [tuple(line.split()[:2]) for line in lines[::step][:count]]


def no_stereo(mol: Chem.Mol) -> str:
    """Canonical SMILES without stereo (the model's coordinates define their own), bond
    orders and charges kept: what the SDF must carry over from the input."""
    mol = Chem.Mol(mol)
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()


def test_library_records():
    assert smi_record("smiles id") is None and smi_record("# note") is None
    assert smi_record("CCO ethanol 2") == {"ligand_id": "ethanol 2", "smiles": "CCO", "ccd": None,
                                           "source": ""}
    assert smi_record("CCO")["ligand_id"].startswith("lig_")     # stable id from the SMILES
    assert table_columns(["Name", "SMILES", "x"]) == ("Name", "SMILES", None)
    sdf = Chem.MolToMolBlock(Chem.MolFromSmiles("CC(=O)[O-]")).replace("\n", "acetate\n", 1)
    (row,) = sdf_records((sdf + "$$$$\n").encode(), "lib.sdf")
    assert row["ligand_id"] == "acetate" and row["smiles"] == "CC(=O)[O-]"


def test_target_from_fasta_or_one_json_job(tmp_path):
    fasta = tmp_path / "t.fasta"
    fasta.write_text(">A|protein\nNLYIQWLKDGGPSSGRPPPS\n")
    assert read_target(str(fasta)).chain_ids == ("A",)
    assert read_target(TARGET).chain_ids == ("A",)
    two = tmp_path / "two.json"
    two.write_text(json.dumps([json.loads((INPUTS / "1l2y.json").read_text())] * 2))
    with pytest.raises(InputError, match="one job, found 2"):
        read_target(str(two))


def test_screen_50_ligands_from_s3_bad_smiles_resume_and_sdf(ray_session, s3_server, s3_bucket,
                                                             s3_env, capsys):
    fs = s3_server.filesystem()
    good = library(47)
    records = good[:20] + BAD + good[20:]
    assert len(records) == 50
    fs.pipe(f"{s3_bucket}/lib/part1.smi", "\n".join(" ".join(r) for r in records[:25]).encode())
    fs.pipe(f"{s3_bucket}/lib/part2.smi", "\n".join(" ".join(r) for r in records[25:]).encode())
    out = f"s3://{s3_bucket}/screen"
    args = ["screen", "--target", TARGET, "--ligands", f"s3://{s3_bucket}/lib", "--out", out,
            "--actors", "1-1", *FAST]

    assert main(args) == 2                             # the bad SMILES: reported, exit 2
    captured = capsys.readouterr()
    assert "screen: 50 ligands" in captured.out and "ok 47, error 3, skipped 0" in captured.out
    with fs.open(f"{s3_bucket}/screen/results.parquet", "rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    assert len(rows) == 50 and len({r["ligand_id"] for r in rows}) == 50
    errors = {r["ligand_id"]: r for r in rows if r["status"] == "error"}
    assert sorted(errors) == sorted(name for _, name in BAD)
    for row in errors.values():
        assert "ligand.smiles" in row["error"] and "SMILES" in row["error"], row["error"]
        assert "Traceback" not in row["error"]
    assert "extra open parentheses" in errors["bad_paren"]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 47
    for row in ok:
        assert row["ranking_score"] is not None and row["iptm"] is not None and row["ptm"] is not None
        assert 0 <= row["ligand_plddt"] <= 100 and row["min_target_ligand_pae"] >= 0
        assert row["seconds"] > 0 and row["stage"] == 2
        assert row["output"] == f"{out}/{row['ligand_id'].lower()}"

    # SDF poses read back by RDKit with the input's bond orders and charges
    smiles_of = {name: smi for smi, name in good}
    for row in ok[:10]:
        stem = row["output"].removeprefix("s3://") + "/" + row["ligand_id"].lower()
        assert fs.exists(f"{stem}_model.cif")
        mols = [m for m in Chem.ForwardSDMolSupplier(fs.open(f"{stem}_ligands.sdf", "rb"))]
        assert len(mols) == 1 and mols[0] is not None
        assert no_stereo(mols[0]) == no_stereo(Chem.MolFromSmiles(smiles_of[row["ligand_id"]]))
        assert 0 <= float(mols[0].GetProp("plddt")) <= 100

    # a rerun skips every finished ligand and keeps their metrics
    assert main(args) == 2
    assert "ok 0, error 3, skipped 47" in capsys.readouterr().out
    with fs.open(f"{s3_bucket}/screen/results.parquet", "rb") as handle:
        again = {r["ligand_id"]: r for r in pq.read_table(handle).to_pylist()}
    for row in ok:
        before = again[row["ligand_id"]]
        assert before["status"] == "skipped"
        assert before["ranking_score"] == pytest.approx(row["ranking_score"], abs=1e-6)
        assert before["ligand_plddt"] == pytest.approx(row["ligand_plddt"])
        assert before["min_target_ligand_pae"] == pytest.approx(row["min_target_ligand_pae"])


def test_funnel_from_csv_and_sdf_folder(ray_session, tmp_path, capsys):
    """A folder holding a CSV and an SDF library; top-2 of stage one go to stage two."""
    picked = library(5, step=7)
    folder = tmp_path / "lib"
    folder.mkdir()
    table = pa.table({"compound_id": [n for _, n in picked[:4]], "smiles": [s for s, _ in picked[:4]]})
    pa_csv.write_csv(table, folder / "part.csv")
    with Chem.SDWriter(str(folder / "part.sdf")) as writer:
        for smi, name in picked[4:]:
            mol = Chem.MolFromSmiles(smi)
            mol.SetProp("_Name", name)
            writer.write(mol)
    out = tmp_path / "out"
    code = main(["screen", "--target", TARGET, "--ligands", str(folder), "--out", str(out),
                 "--funnel", "top-k:2", "--stage1-steps", "2", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stage 1: 5 ligands" in captured.out and "stage 2: 2 ligands" in captured.out
    rows = pq.read_table(out / "results.parquet").to_pylist()
    first = [r for r in rows if r["stage"] == 1]
    second = [r for r in rows if r["stage"] == 2]
    assert sorted(r["ligand_id"] for r in first) == sorted(n for _, n in picked)
    assert all(r["status"] == "ok" for r in rows)
    best = sorted(first, key=lambda r: (-r["ranking_score"], r["ligand_id"]))[:2]
    assert sorted(r["ligand_id"] for r in second) == sorted(r["ligand_id"] for r in best)
    for row in second:
        assert row["output"] == str(out / "stage2" / row["ligand_id"].lower())
        summary = json.loads((out / "stage2" / row["ligand_id"].lower()
                              / f"{row['ligand_id'].lower()}_summary_confidences.json").read_text())
        assert summary["ranking_score"] == pytest.approx(row["ranking_score"], abs=0.006)  # 2 decimals


def test_killed_driver_then_rerun_skips_finished_ligands(ray_session, tmp_path, capsys):
    """SIGKILL a running screen (driver on the shared cluster), rerun: finished ligands are
    skipped and keep the ligand metrics their part files recorded."""
    picked = library(12, step=8)
    (tmp_path / "lib.smi").write_text("".join(f"{s} {n}\n" for s, n in picked))
    out = tmp_path / "out"
    args = ["--target", TARGET, "--ligands", str(tmp_path / "lib.smi"), "--out", str(out),
            "--actors", "1-1", *FAST[:2], "--steps", "10", *FAST[4:],
            "--model-batch-size", "2"]   # batched, yet small batches: a kill lands mid-screen
    env = {**ray_session.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    gcs = "127.0.0.1:" + ray_session.address.rsplit(":", 1)[1]
    log = tmp_path / "driver.log"
    with open(log, "wb") as handle:   # a file, not a pipe: a full pipe would stall the driver
        proc = subprocess.Popen([sys.executable, "-m", "foldray.jobs.screen", *args,
                                 "--address", gcs], env=env, stdout=handle,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400   # generous: the 2 shared cores may be busy
        while not any(r["status"] == "ok" for r in read_parts(str(out))):   # kill at once
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no ligand finished in time: " + log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(2)   # Ray reaps the dead driver's workers
    parted = {r["ligand_id"]: r for r in read_parts(str(out)) if r["status"] == "ok"}
    assert 1 <= len(parted) < len(picked) and not (out / "results.parquet").exists()

    assert main(["screen", *args]) == 0
    rows = {r["ligand_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert set(rows) == {n for _, n in picked}
    skipped = {name for name, row in rows.items() if row["status"] == "skipped"}
    assert set(parted) <= skipped and {r["status"] for r in rows.values()} == {"ok", "skipped"}
    for name in skipped:   # finished after the last part file: metrics from its outputs
        assert rows[name]["ligand_plddt"] is not None and rows[name]["min_target_ligand_pae"] >= 0
    for name in parted:
        assert rows[name]["ligand_plddt"] == pytest.approx(parted[name]["ligand_plddt"])
        assert rows[name]["min_target_ligand_pae"] == pytest.approx(
            parted[name]["min_target_ligand_pae"])
    assert f"skipped {len(skipped)}" in capsys.readouterr().out


def test_pocket_is_checked_before_any_ligand_runs(tmp_path, capsys):
    """`--pocket` naming residues the target lacks, or a model without the constraint
    embedder: one error line and exit 2 before Ray starts or any ligand is predicted."""
    (tmp_path / "lib.smi").write_text("CCO ethanol\n")
    base = ["screen", "--target", TARGET, "--ligands", str(tmp_path / "lib.smi"),
            "--out", str(tmp_path / "o")]
    assert main([*base, "--pocket", "A:2,99"]) == 2
    assert "--pocket: residue '99' of chain A is not in 1..20" in capsys.readouterr().err
    assert main([*base, "--pocket", "A:2,6"]) == 2
    err = capsys.readouterr().err
    assert "--pocket: the model (random weights) has no constraint embedder" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
