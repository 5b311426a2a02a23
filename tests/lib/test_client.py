"""Client-side parts of foldray.client that need no server: ligands, targets, resume."""

import pyarrow as pa
from rdkit import Chem

from foldray.client import ROW_SCHEMA, _done_ids, load_ligands, target_job
from tests.data_paths import LIGANDS


def test_load_ligands_from_smi_sdf_and_strings(tmp_path):
    items = load_ligands(LIGANDS / "screen_100.smi")
    assert len(items) == 100 and items[0]["id"] == "ChEMBL_11265_A_1"
    assert len({item["id"] for item in items}) == 100
    writer = Chem.SDWriter(str(tmp_path / "two.sdf"))
    for name, smiles in (("ethanol", "CCO"), ("", "c1ccccc1")):
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", name)
        writer.write(mol)
    writer.close()
    assert load_ligands(tmp_path / "two.sdf") == [{"id": "ethanol", "smiles": "CCO"},
                                                  {"id": "record_1", "smiles": "c1ccccc1"}]
    assert load_ligands(["CCO", "ccd:ATP", {"id": "x", "smiles": "C"}, "CCO"]) == [
        {"id": "ligand_0", "smiles": "CCO"}, {"id": "ATP", "ccd": "ATP"},
        {"id": "x", "smiles": "C"}, {"id": "ligand_3", "smiles": "CCO"}]
    assert [i["id"] for i in load_ligands([{"id": "a", "smiles": "C"}] * 3)] == ["a", "a_1", "a_2"]


def test_target_job_and_resume_rows():
    job = target_job("NLYIQWLKDGGPSSGRPPPS", msa=">q\nNLYIQWLKDGGPSSGRPPPS\n")
    assert job["sequences"][0]["protein"]["unpairedMsa"].startswith(">q")
    assert [s["protein"]["id"] for s in target_job(["AAA", "GGG"])["sequences"]] == ["A", "B"]
    rows = [{"ligand_id": "a", "status": "ok"}, {"ligand_id": "b", "status": "failed"},
            {"ligand_id": "c", "status": "error"}]
    table = pa.Table.from_pylist([{k: r.get(k) for k in ROW_SCHEMA.names} for r in rows],
                                 schema=ROW_SCHEMA)
    assert set(_done_ids(table)) == {"a", "c"}      # failed ones are retried


def test_client_and_serving_library_do_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, foldray.client, foldray.serving, foldray.screening, foldray.batched_predict; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
