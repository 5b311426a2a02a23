"""The Serve app end to end: real Ray Serve on loopback, the real client, the tiny model.

One app (`served`) is deployed for the module in the session's Ray; the overload test
deploys a second app with tiny queue limits beside it. Both are removed at the end
(`serve.shutdown()`). Model settings are tiny (1 sample, 4 diffusion steps, 1 recycle)
so the 100-ligand screen takes about a minute on 2 CPUs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from foldray.client import FoldrayClient, FoldrayError
from foldray.errors import InputError
from foldray.inputs.af3_json import parse_af3_json
from foldray.jobs.validate import format_error
from tests.data_paths import BAD_INPUTS, INPUTS, LIGANDS, REPO, SEQDB

TRP_CAGE = "NLYIQWLKDGGPSSGRPPPS"        # 1L2Y, 20 residues
TOKEN = "test-token-0123456789abcdef"
TINY = {"model_config": "tiny", "n_sample": 1, "n_step": 4, "n_cycle": 1,
        "featurizer_num_cpus": 0.25, "model_num_cpus": 0.5, "debug_endpoints": True,
        "max_body_bytes": 1 << 20, "max_tokens": 512, "retry_max_s": 120.0, "access_log": False,
        "allow_local_out": True}
INVALID = ["C1CC(N", "c1ccccc1X", "CC(=O)O)("]


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    client: FoldrayClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text or b"{}")
        except ValueError:        # Serve's proxy answers a full queue with plain text
            return err.code, {"text": text.decode("utf-8", "replace")}


@pytest.fixture(scope="module")
def served(ray_session, s3_server, tmp_path_factory) -> Iterator[Served]:
    from ray import serve

    from foldray.actors.serve import build_app

    token_file = tmp_path_factory.mktemp("serve") / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # env_vars: the replicas that write `out` URLs reach the test's S3 server
        serve.run(build_app({**TINY, "token_file": str(token_file), "env_vars": s3_server.env()}),
                  name="foldray", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        yield Served(url=url, port=port, client=FoldrayClient(url, token=TOKEN, timeout=30))
    finally:
        serve.shutdown()


def test_health_needs_no_token_and_everything_else_does(served):
    assert _http("GET", served.url + "/healthz") == (200, {"status": "ok"})
    before = served.client.stats()
    job = (INPUTS / "1l2y.json").read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        for method, path, body in (("POST", "/v1/predict", job), ("GET", "/v1/jobs/x", None),
                                   ("POST", "/v1/screen", b"{}"), ("GET", "/v1/debug/stats", None)):
            status, _ = _http(method, served.url + path, body, headers)
            assert status == 401, (headers, path)
    with pytest.raises(FoldrayError) as err:
        FoldrayClient(served.url, token="nope").submit(json.loads(job))
    assert err.value.status == 401
    after = served.client.stats()
    assert after["model"]["n_jobs"] == before["model"]["n_jobs"]          # no model work
    assert after["ingress"]["created"] == before["ingress"]["created"]    # no job made
    assert after["ingress"]["unauthorized"] >= before["ingress"]["unauthorized"] + 17


def test_bad_inputs_get_422_and_413_with_validate_messages(served):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for name in ("wrong_dialect_version.json", "not_valid_json.json", "empty_sequence.json"):
        text = (BAD_INPUTS / name).read_bytes()
        status, body = _http("POST", served.url + "/v1/predict", text, headers)
        with pytest.raises(InputError) as reference:
            parse_af3_json(text, source="request")
        assert status == 422
        assert "error: " + body["error"] == format_error(reference.value)
    status, body = _http("POST", served.url + "/v1/predict",
                         (BAD_INPUTS / "huge_token_count_20000aa.json").read_bytes(), headers)
    assert status == 422
    assert body["error"].startswith("request: huge_20000: sequences: the job has at least 20000 tokens")
    status, body = _http("POST", served.url + "/v1/predict", b" " * (2 << 20), headers)
    assert status == 413 and "limit" in body["detail"]


def test_predict_returns_structure_and_confidences_or_writes_af3_layout(served, tmp_path, s3_server,
                                                                        s3_bucket):
    job = json.loads((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
    prediction = served.client.predict(job, timeout=120)
    assert [chain.name for chain in prediction.structure[0]] == ["A", "B"]
    assert prediction.summary_confidences["chain_ids"] == ["A", "B"]
    assert len(prediction.confidences["token_chain_ids"]) == 20 + 15      # 15 ibuprofen atoms
    assert len(prediction.confidences["atom_plddts"]) == prediction.structure[0].count_atom_sites()
    # a bad SMILES found at featurization comes back as the job's error, validate's line
    bad = json.loads((BAD_INPUTS / "invalid_smiles.json").read_text())
    with pytest.raises(FoldrayError) as err:
        served.client.predict(bad, timeout=60)
    assert "bad_smiles: sequences[1].ligand.smiles: RDKit could not parse" in err.value.message
    written = served.client.predict(job, out=str(tmp_path), timeout=120)
    folder = tmp_path / "tiny_protein_ligand_smiles"
    assert written.output == str(folder) and written.mmcif is None
    assert (folder / "tiny_protein_ligand_smiles_summary_confidences.json").exists()
    assert (folder / "tiny_protein_ligand_smiles_model.cif").exists()
    # object storage, in the AF3 layout
    to_s3 = served.client.predict(job, out=f"s3://{s3_bucket}/predictions", timeout=120)
    assert to_s3.output == f"s3://{s3_bucket}/predictions/tiny_protein_ligand_smiles"
    names = {p.rsplit("/", 1)[-1] for p in s3_server.filesystem().ls(to_s3.output.removeprefix("s3://"))}
    assert {"tiny_protein_ligand_smiles_model.cif", "tiny_protein_ligand_smiles_confidences.json",
            "tiny_protein_ligand_smiles_data.json", "seed-1_sample-0"} <= names


def test_screen_of_100_ligands_with_target_cache_and_resume(served, tmp_path):
    ligands = [{"id": line.split()[1], "smiles": line.split()[0]}
               for line in (LIGANDS / "screen_100.smi").read_text().splitlines() if line.strip()]
    ligands += [{"id": f"invalid_{i}", "smiles": s} for i, s in enumerate(INVALID)]
    before = served.client.stats()
    streamed: list[dict] = []
    start = time.monotonic()
    table = served.client.screen({"protein": TRP_CAGE}, ligands, concurrency=4,
                                 on_row=streamed.append, progress=False)
    seconds = time.monotonic() - start
    rows = table.to_pylist()
    assert table.num_rows == len(streamed) == 103
    assert [r["ligand_id"] for r in rows] == [lig["id"] for lig in ligands]
    for row in rows[:100]:
        assert row["status"] == "ok", row
        for name in ("ranking_score", "iptm", "ptm", "ligand_mean_plddt", "min_pae_target_ligand"):
            assert row[name] is not None and math.isfinite(row[name]), (row["ligand_id"], name)
    for row in rows[100:]:
        assert row["status"] == "error" and "RDKit could not parse" in row["error"], row
        assert "sequences[1].ligand.smiles" in row["error"]
    after = served.client.stats()
    new_jobs = after["model"]["n_jobs"] - before["model"]["n_jobs"]
    assert new_jobs == 100                                   # invalid ligands never reach it
    cache = after["featurizer"]
    assert cache["target_cache_misses"] - before["featurizer"]["target_cache_misses"] <= 1
    assert cache["target_cache_hits"] - before["featurizer"]["target_cache_hits"] >= 99
    n_forward = after["model"]["n_forward"] - before["model"]["n_forward"]
    print(f"screen of 103 ligands: {seconds:.1f} s, {n_forward} forward passes, "
          f"largest batch {after['model']['largest_batch']}")
    # resume: nothing is submitted again, the table is the same
    path = tmp_path / "screen.parquet"
    import pyarrow.parquet as pq
    pq.write_table(table, path)
    again = served.client.screen({"protein": TRP_CAGE}, ligands, resume_from=str(path), progress=False)
    assert again.to_pylist() == rows
    assert served.client.stats()["ingress"]["created"] == after["ingress"]["created"]


def test_killed_model_replica_is_restarted_and_every_ligand_completes_once(served):
    ligands = [f"C{'C' * (i % 7)}O{'C' * (i % 5)}N" for i in range(30)]
    before = served.client.stats()
    pid = before["model"]["pid"]
    result: dict = {}

    def run() -> None:
        result["table"] = served.client.screen(TRP_CAGE, ligands, concurrency=4, progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while served.client.stats()["model"]["n_jobs"] < before["model"]["n_jobs"] + 5:
        assert time.monotonic() < deadline, "screen did not start"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)                             # the replica process, mid-screen
    thread.join(timeout=400)
    assert not thread.is_alive()
    rows = result["table"].to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 30
    assert len({r["ligand_id"] for r in rows}) == len({r["job_id"] for r in rows}) == 30
    after = served.client.stats()
    assert after["model"]["pid"] != pid                      # Serve started a new replica
    assert after["ingress"]["created"] - before["ingress"]["created"] == 30   # one job per ligand
    assert after["ingress"]["max_completions"] == 1          # and each finished exactly once
    assert after["ingress"]["jobs"].get("failed", 0) == 0
    assert after["ingress"]["model_retries"] > before["ingress"]["model_retries"]  # work was lost


def test_killed_ingress_loses_its_job_table_and_the_client_resubmits_the_lost_ligands(served):
    ligands = [f"N{'C' * (i % 6)}C(=O){'C' * (i % 4)}O" for i in range(20)]
    before = served.client.stats()
    result: dict = {}

    def run() -> None:
        result["table"] = served.client.screen(TRP_CAGE, ligands, concurrency=4, progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while served.client.stats()["model"]["n_jobs"] < before["model"]["n_jobs"] + 3:
        assert time.monotonic() < deadline, "screen did not start"
        time.sleep(0.2)
    os.kill(served.client.stats()["ingress"]["pid"], signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive()
    rows = result["table"].to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 20
    assert len({r["ligand_id"] for r in rows}) == 20
    after = served.client.stats()
    assert after["ingress"]["pid"] != before["ingress"]["pid"]
    assert 0 < after["ingress"]["created"] <= 20        # the new ingress only saw the lost ones


def test_overload_gets_503_and_the_client_retries_until_all_succeed(served, ray_session, tmp_path):
    from ray import serve

    from foldray.actors.serve import build_app

    (tmp_path / "token").write_text(TOKEN)
    serve.run(build_app({**TINY, "token_file": str(tmp_path / "token"), "max_pending_jobs": 2,
                         "ingress_max_ongoing_requests": 2, "ingress_max_queued_requests": 2,
                         "model_max_ongoing_requests": 1, "model_max_queued_requests": 1,
                         "max_batch_size": 1, "allow_local_out": False}),
              name="overload", route_prefix="/overload")
    try:
        client = FoldrayClient(served.url + "/overload", token=TOKEN, timeout=30, backoff_s=0.2,
                               max_retries=30)
        job = json.loads((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
        for out in ("/tmp/elsewhere", "file:///tmp/elsewhere"):    # no writes to the server's disk
            with pytest.raises(FoldrayError) as err:
                client.submit(job, out=out)
            assert err.value.status == 422 and ": out: local output paths" in err.value.message
        burst = [{**job, "name": f"burst_{i}"} for i in range(12)]
        # a raw burst without retries: some are refused fast with 503 + Retry-After
        statuses: list[int] = []

        def post(item: dict) -> None:
            statuses.append(_http("POST", client.url + "/v1/predict", json.dumps(item).encode(),
                                  {"Authorization": f"Bearer {TOKEN}"})[0])

        threads = [threading.Thread(target=post, args=(item,)) for item in burst[:6]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        raw_503 = statuses.count(503)
        assert raw_503 >= 1 and set(statuses) <= {202, 503}, statuses
        rss_before = client.stats()["ingress"]["rss_bytes"]
        # the client retries the refused ones; every job ends done
        results: list = [None] * len(burst)

        def predict(i: int) -> None:
            results[i] = client.predict(burst[i], timeout=300)

        threads = [threading.Thread(target=predict, args=(i,)) for i in range(len(burst))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert all(r is not None and r.summary_confidences for r in results)
        stats = client.stats()
        print(f"overload: raw burst {statuses}, client retries {client.retries}, stats {stats}")
        assert client.retries > 0
        assert stats["ingress"]["rejected_busy"] >= raw_503 + 1
        assert stats["ingress"]["pending"] == 0
        # refused work costs the server nothing it keeps: its memory stays put
        assert stats["ingress"]["rss_bytes"] - rss_before < 100 << 20
    finally:
        serve.delete("overload")


def test_cli_refuses_without_token_then_serves_insecure_and_config_is_valid(served, monkeypatch,
                                                                            capsys):
    """Last in the module: `foldray serve` replaces the module's app with its own."""
    from ray.serve.schema import ServeDeploySchema

    from foldray.actors import serve as serve_app
    from foldray.jobs.cli import main

    monkeypatch.delenv("FOLDRAY_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("FOLDRAY_SERVE_TOKEN_FILE", raising=False)
    assert main(["serve", "--port", str(_free_port()), "--detach"]) == 2
    assert "no serve token" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no serve token"):
        serve_app.app  # noqa: B018  (the attribute `serve run` reads builds the app)
    config = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    monkeypatch.setenv("FOLDRAY_SERVE_TOKEN", TOKEN)
    app = serve_app.build_app(config["applications"][0]["args"])    # every arg is known
    assert app is not None
    with pytest.raises(ValueError, match="unknown foldray serve settings"):
        serve_app.build_app({"num_gpu": 1})
    # --insecure-no-auth: the CLI deploys into the running Serve, requests need no token
    monkeypatch.delenv("FOLDRAY_SERVE_TOKEN")
    assert main(["serve", "--insecure-no-auth", "--port", str(served.port), "--detach",
                 "--model-config", "tiny", "--set", "n_sample=1", "--set", "n_step=2",
                 "--set", "featurizer_num_cpus=0.25", "--set", "model_num_cpus=0.5"]) == 0
    assert f"ready at http://127.0.0.1:{served.port}/" in capsys.readouterr().out
    prediction = FoldrayClient(served.url).predict(json.loads((INPUTS / "1l2y.json").read_text()),
                                                   timeout=120)
    assert prediction.summary_confidences["chain_ids"] == ["A"]


def test_screen_target_without_msa_is_searched_once_through_the_msa_cache(served, tmp_path):
    """`msa_config`: the featurizer searches chains sent without an MSA (real jackhmmer over
    the real 9,674-sequence database, 2 shards on a Ray shard worker), once per target."""
    from ray import serve

    from foldray.actors.serve import build_app

    (tmp_path / "token").write_text(TOKEN)
    cache = tmp_path / "msa_cache"
    config = tmp_path / "msa.yaml"
    config.write_text(yaml.safe_dump({"shards": 2, "databases": [
        {"name": "uniref90", "url": str(SEQDB / "protein_db.fasta"), "tool": "jackhmmer",
         "role": "unpaired", "max_sequences": 64}]}))
    serve.run(build_app({**TINY, "token_file": str(tmp_path / "token"), "msa_config": str(config),
                         "msa_cache": str(cache), "msa_worker_cpus": 0.25}),
              name="msa", route_prefix="/msa")
    try:
        client = FoldrayClient(served.url + "/msa", token=TOKEN, timeout=30)
        globin = json.loads((INPUTS / "102m.json").read_text())["sequences"][0]["protein"]["sequence"]
        ligands = [{"id": f"lig{i}", "smiles": s} for i, s in enumerate(["CCO", "c1ccccc1O", "CC(=O)N"])]
        table = client.screen({"protein": globin}, ligands, concurrency=3, progress=False)
        assert [r["status"] for r in table.to_pylist()] == ["ok"] * 3
        stats = client.stats()["featurizer"]
        # one chain, one database: searched once although 3 ligands arrived at the same time
        assert stats["msa_searched"] == 1 and stats["msa_cached"] == 0
        (a3m,) = cache.rglob("*.a3m")                                        # stored for every caller
        records = [line for line in a3m.read_text().splitlines() if line.startswith(">")]
        assert 2 <= len(records) <= 65                                        # query + globin hits
        # a second screen and a plain prediction of the same chain: no new search
        again = client.screen({"protein": globin}, ligands[:1], progress=False)
        assert again.to_pylist()[0]["status"] == "ok"
        result = client.predict({"name": "globin", "modelSeeds": [1], "dialect": "alphafold3",
                                 "version": 2, "sequences": [{"protein": {"id": "A", "sequence": globin}}]},
                                timeout=300)
        assert result.summary_confidences["ptm"] is not None
        assert client.stats()["featurizer"]["msa_searched"] == 1
    finally:
        serve.delete("msa")
