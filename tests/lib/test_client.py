"""Client-side parts of foldray.client that need no server: ligands, targets, resume."""

import http.server
import json
import threading
import time

import pyarrow as pa
import pytest
from rdkit import Chem

from foldray.client import ROW_SCHEMA, FoldrayClient, FoldrayError, _done_ids, load_ligands, target_job
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

    code = ("import sys, foldray.client, foldray.serving, foldray.screening, foldray.predictor, "
            "foldray.job_store, foldray.out_allowlist, foldray.serve_config; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Server:
    """A real HTTP server on loopback answering from a script of (status, headers, body)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append(f"{self.command} {self.path}")
                status, headers, body = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retry_after_is_capped_and_bodies_are_bounded():
    busy = (503, {"Retry-After": "86400"}, b'{"detail": "server busy"}')
    with _Server([busy, (200, {}, b'{"status": "ok"}')]) as server:
        client = FoldrayClient(server.url, backoff_s=0.01, max_retry_after_s=0.2)
        start = time.monotonic()
        assert client.health()                  # waited at most ~0.3 s, not a day
        assert time.monotonic() - start < 3 and client.retries == 1
    huge = json.dumps({"jobs": ["x" * 1000] * 2000}).encode()          # ~2 MB
    with _Server([(200, {}, huge)]) as server:
        with pytest.raises(FoldrayError, match="larger than max_response_bytes"):
            FoldrayClient(server.url, max_response_bytes=1 << 20).jobs(["a"])
        assert len(FoldrayClient(server.url).jobs(["a"])) == 2000      # the default takes it
    with _Server([(422, {}, b'{"error": "' + b"e" * (1 << 20) + b'"}')]) as server, \
            pytest.raises(FoldrayError) as err:
        FoldrayClient(server.url).health()
        assert err.value.status == 422 and len(err.value.message) <= 64 << 10


def test_expired_jobs_end_a_screen_row_and_a_wait():
    why = "job j1 expired: finished jobs are kept for 60 s"
    with _Server([(202, {}, json.dumps({"jobs": [{"ligand_id": "a", "id": "j1"}]}).encode()),
                  (200, {}, json.dumps({"jobs": [{"id": "j1", "status": "expired",
                                                  "error": why}]}).encode())]) as server:
        rows = FoldrayClient(server.url, poll_s=0.01).screen("NLYIQW", [{"id": "a", "smiles": "C"}],
                                                             progress=False).to_pylist()
    assert rows[0]["status"] == "failed" and rows[0]["error"] == why
    gone = (410, {}, json.dumps({"id": "j1", "status": "expired", "error": why}).encode())
    with _Server([gone]) as server, pytest.raises(FoldrayError) as err:
        FoldrayClient(server.url).wait("j1", timeout=5)
    assert err.value.status == 410 and err.value.message == why
