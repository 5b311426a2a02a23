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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from foldray.actors.env_guard import SECRET_ENV
from foldray.client import FoldrayClient, FoldrayError
from foldray.errors import InputError
from foldray.inputs.af3_json import parse_af3_json
from foldray.io.results import SCREEN_SCHEMA
from foldray.jobs.validate import format_error
from tests.data_paths import BAD_INPUTS, INPUTS, LIGANDS, REPO, SEQDB

TRP_CAGE = "NLYIQWLKDGGPSSGRPPPS"        # 1L2Y, 20 residues
TOKEN = "test-token-0123456789abcdef"
TINY = {"model_config": "tiny", "n_sample": 1, "n_step": 4, "n_cycle": 1,
        "featurizer_num_cpus": 0.25, "model_num_cpus": 0.5, "debug_endpoints": True,
        "max_body_bytes": 1 << 20, "max_tokens": 512, "retry_max_s": 120.0, "access_log": False}
INVALID = ["C1CC(N", "c1ccccc1X", "CC(=O)O)("]


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    client: FoldrayClient
    bucket: str                  # s3://<bucket>/predictions/ is on the app's output_allowlist
    local_out: Path              # and so is this folder (file://)


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
    bucket, local_out = s3_server.create_bucket("serve"), tmp_path_factory.mktemp("serve_out")
    allowlist = [f"file://{local_out}/", f"s3://{bucket}/predictions/"]
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # env_vars: the replicas that write `out` URLs reach the test's S3 server (endpoint and
        # credentials-file name only: build_app refuses keys)
        env_vars = {k: v for k, v in s3_server.env().items() if k not in SECRET_ENV}
        serve.run(build_app({**TINY, "token_file": str(token_file), "env_vars": env_vars,
                             "output_allowlist": allowlist}),
                  name="foldray", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        yield Served(url=url, port=port, client=FoldrayClient(url, token=TOKEN, timeout=30),
                     bucket=bucket, local_out=local_out)
    finally:
        serve.shutdown()


def test_importing_the_app_needs_no_token_and_serve_run_builds_it_from_its_arguments():
    """`serve run foldray.actors.serve:app key=value`: the module imports without a token (and
    without Ray running); Serve's own builder call turns the command line's strings into the
    app, dotted runtime keys included; without a token building refuses."""
    import subprocess
    import sys

    code = """
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary as build

import foldray.actors.serve
builder = import_attr("foldray.actors.serve:app")      # what `serve run` does, in this order
app = build(builder, {"insecure_no_auth": "true", "n_sample": "2", "runtime.precision": "bf16"})
assert isinstance(app, Application)
try:
    build(builder, {})
except ValueError as err:
    print("refused:", err)
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FOLDRAY_SERVE_TOKEN", "FOLDRAY_SERVE_TOKEN_FILE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("refused: no serve token"), out.stdout


def test_model_deployment_loads_the_predictor_with_the_apps_runtime_settings():
    from foldray.actors.serve_deployments import Model
    from foldray.serve_config import load_serve_config

    config = load_serve_config({"runtime.chunk_size": 8, "runtime.diffusion_chunk": 2, "max_batch_size": 3})
    model = Model.func_or_class(None, config.model_config, "cpu", config.max_batch_size,
                                config.batch_wait_timeout_s, config.runtime)
    assert model.predictor.runtime == config.runtime
    assert model.stats()["runtime"]["chunk_size"] == 8 and model.max_batch_size == 3


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
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):   # no open schema
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            assert _http("GET", served.url + path, None, headers)[0] == 404, path


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


def test_predict_returns_structure_and_confidences_or_writes_af3_layout(served, s3_server):
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
    # a local folder on the allowlist (file://): each job writes into <out>/<job id>/<name>
    written = served.client.predict(job, out=str(served.local_out / "run"), timeout=120)
    root = Path(os.path.realpath(served.local_out)) / "run" / written.job_id
    folder = root / "tiny_protein_ligand_smiles"
    assert written.output == f"file://{folder}" and written.mmcif is None
    assert (folder / "tiny_protein_ligand_smiles_summary_confidences.json").exists()
    assert (folder / "tiny_protein_ligand_smiles_model.cif").exists()
    # object storage, in the AF3 layout; the same name again goes to a new folder, the
    # first job's files stay (no request replaces another's outputs)
    s3 = s3_server.filesystem()
    to_s3 = served.client.predict(job, out=f"s3://{served.bucket}/predictions", timeout=120)
    assert to_s3.output == f"s3://{served.bucket}/predictions/{to_s3.job_id}/tiny_protein_ligand_smiles"
    names = {p.rsplit("/", 1)[-1] for p in s3.ls(to_s3.output.removeprefix("s3://"))}
    assert {"tiny_protein_ligand_smiles_model.cif", "tiny_protein_ligand_smiles_confidences.json",
            "tiny_protein_ligand_smiles_data.json", "seed-1_sample-0"} <= names
    summary = to_s3.output.removeprefix("s3://") + "/tiny_protein_ligand_smiles_summary_confidences.json"
    first = s3.cat(summary)
    again = served.client.predict(job, out=f"s3://{served.bucket}/predictions/", timeout=120)
    assert again.output != to_s3.output and again.job_id != to_s3.job_id
    assert s3.cat(summary) == first and s3.exists(again.output.removeprefix("s3://"))


def _post(served: Served, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _http("POST", served.url + path, data, {"Authorization": f"Bearer {TOKEN}"})


# Outputs the served app must refuse ({b}: its bucket, whose predictions/ prefix is allowed)
HOSTILE_OUTS = ("simplecache::file:///tmp/x", "filecache::s3://{b}/predictions/x",
                "dir::s3://{b}/predictions", "memory://{b}/predictions/x", "http://127.0.0.1:1/x",
                "https://169.254.169.254/latest", "file:///tmp/elsewhere", "/etc",
                "s3://{b}/predictions-evil/x", "s3://{b}/predictions/../x", "s3://{b}/other/x",
                "s3://other-bucket/predictions/x", "s3://{b}/predictions/x?versionId=1")


def test_outputs_outside_the_allowlist_are_refused_before_any_work(served):
    before = served.client.stats()["ingress"]["created"]
    job = json.loads((INPUTS / "1l2y.json").read_text())
    for template in HOSTILE_OUTS:
        out = template.format(b=served.bucket)
        with pytest.raises(FoldrayError) as err:
            served.client.submit(job, out=out)
        assert err.value.status == 422 and err.value.message.startswith("request: -: out: "), out
        status, body = _post(served, "/v1/screen", {"target": job, "out": out,
                                                    "ligands": [{"id": "a", "smiles": "CCO"}]})
        assert status == 422 and body["error"].startswith("request: -: out: "), out
    # a pocket: a residue the target lacks, or a model without the constraint embedder (the tiny
    # preset has none), refuses the whole screen before any ligand runs, as `foldray screen --pocket`
    ligand = {"id": "a", "smiles": "CCO"}
    for extra, line in (({"pocket": "A:2,99"}, "request: -: pocket: residue '99' of chain A is not in 1..20"),
                        ({"pocket": ["B:1"]}, "request: -: pocket: expected CHAIN:RES[,RES...] with a chain"),
                        ({"pocket": "A:2,6"}, "request: -: pocket: the model (random weights) has no "
                                              "constraint embedder"),
                        ({"ligands": [ligand, {**ligand, "id": "b", "pocket": "A:4"}]},
                         "request: -: ligands[1].pocket: the model (random weights) has no constraint")):
        status, body = _post(served, "/v1/screen", {"target": job, "ligands": [ligand], **extra})
        assert status == 422 and body["error"].startswith(line), body
    rows = served.client.screen(job, ["CCO", "CCN"], pocket="A:2,6", progress=False).to_pylist()
    assert [r["status"] for r in rows] == ["failed"] * 2 and "no constraint embedder" in rows[0]["error"]
    assert served.client.stats()["ingress"]["created"] == before


def test_idempotency_key_with_another_request_is_refused(served):
    job = json.loads((INPUTS / "1l2y.json").read_text())
    key = uuid.uuid4().hex
    first = served.client.submit(job, idempotency_key=key)
    assert served.client.submit(job, idempotency_key=key) == first          # a retry: the same job
    for other in ({**job, "name": "another"}, job):
        with pytest.raises(FoldrayError) as err:                            # another body, or out
            served.client.submit(other, idempotency_key=key,
                                 out=None if other is not job else f"s3://{served.bucket}/predictions")
        assert err.value.status == 422
        assert "Idempotency-Key: this idempotency key was used before" in err.value.message
    body = {"target": job, "ligands": [{"id": "a", "smiles": "CCO", "key": key}]}
    status, answer = _post(served, "/v1/screen", body)
    assert status == 202 and _post(served, "/v1/screen", body)[1]["jobs"] == answer["jobs"]
    body["ligands"][0]["smiles"] = "CCN"
    status, refused = _post(served, "/v1/screen", body)
    assert status == 422 and "ligands[0].key: this idempotency key was used before" in refused["error"]
    for job_id in (first[0], answer["jobs"][0]["id"]):
        assert served.client.wait(job_id, timeout=180)["status"] == "done"


def test_hostile_bodies_get_4xx_or_a_job_error_never_a_500(served):
    job = json.loads((INPUTS / "1l2y.json").read_text())
    protein = job["sequences"][0]["protein"]

    def with_protein(**fields: object) -> dict:
        return {**job, "sequences": [{"protein": {**protein, **fields}}]}

    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = {
        "deep": deep, "deep_field": b'{"name": ' + deep + b"}",
        "deep_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "mmcif_int": with_protein(unpairedMsa="", pairedMsa="",
                                  templates=[{"mmcif": 123, "queryIndices": [0], "templateIndices": [0]}]),
        "sequence_int": with_protein(sequence=123), "modifications": with_protein(modifications="x"),
        "seeds_str": {**job, "modelSeeds": "abc"}, "seeds_huge": {**job, "modelSeeds": [2 ** 80]},
        "sequences_dict": {**job, "sequences": {"protein": 1}}, "name_list": {**job, "name": ["a"]},
        "huge_smiles": {**job, "sequences": [*job["sequences"],
                                             {"ligand": {"id": "Z", "smiles": "C" * 5000}}]},
        "msa_path": with_protein(unpairedMsaPath="../../../../etc/hostname"),
        "bonds": {**job, "bondedAtomPairs": [["A", 1]]}, "not_utf8": b"\xff\xfe{", "null": b"null",
        "big_number": b"1e400", "empty": b"",
    }
    hostname = Path("/etc/hostname").read_text().strip()
    accepted = []
    for name, body in bodies.items():
        start = time.monotonic()
        status, answer = _post(served, "/v1/predict", body)
        assert time.monotonic() - start < 30, name
        text = json.dumps(answer)
        assert "Traceback" not in text and (len(hostname) < 6 or hostname not in text), name
        if status == 202:
            accepted += answer["ids"]
        else:
            assert status == 422 and answer["error"].startswith("request: "), (name, status, answer)
    for job_id in accepted:                  # anything accepted ends as the job's error line
        record = served.client.wait(job_id, timeout=180)
        assert record["status"] == "error" and "Traceback" not in record["error"], record
    screens = [deep, {"target": 5, "ligands": [{"id": "a", "smiles": "C"}]},
               {"target": job, "ligands": [{"id": "a", "smiles": 123}]},
               {"target": job, "ligands": [{"id": "a", "smiles": "C", "key": {"k": 1}}]},
               {"target": job, "ligands": "CCO"}, {"target": job, "ligands": [{"id": "a"}], "samples": "2"}]
    for body in screens:
        status, answer = _post(served, "/v1/screen", body)
        assert status == 422 and answer["error"].startswith("request: "), (body, status, answer)
    # a ligand too big for the server is that ligand's error, at once; the others run
    rows = served.client.screen(TRP_CAGE, ["C" * 5000, "CCO"], progress=False).to_pylist()
    assert rows[0]["status"] == "error" and "at least 5020 tokens" in rows[0]["error"]
    assert rows[1]["status"] == "ok"


def test_screen_ligands_whose_names_collide_keep_both_results(served, s3_server):
    out = f"s3://{served.bucket}/predictions/collide"
    rows = served.client.screen(TRP_CAGE, [{"id": "Lig", "smiles": "CCO"}, {"id": "lig", "smiles": "CCN"}],
                                out=out, progress=False).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    names = [served.client.job(r["job_id"])["ligand"]["output_name"] for r in rows]
    assert names == ["lig", "lig_2"]                       # recorded with each job
    s3 = s3_server.filesystem()
    for row, name in zip(rows, names, strict=True):
        assert row["output"] == f"{out}/{row['job_id']}/{name}"
        assert s3.exists(row["output"].removeprefix("s3://") + f"/{name}_summary_confidences.json")


def test_ray_task_errors_are_reported_as_their_cause_without_traceback():
    from ray.exceptions import RayTaskError

    from foldray.serving import error_summary

    err = RayTaskError("featurize", "Traceback (most recent call last):\n  File \"x.py\"",
                       KeyError("mmcif")).as_instanceof_cause()
    assert error_summary(err) == "KeyError: 'mmcif'"


def test_pocket_check_answers_503_while_the_model_is_unreachable_and_asks_again_later():
    """The one-time constraint-embedder check is about the model, not the request: a model
    deployment that stays unreachable past `retry_max_s` is a 503 with Retry-After (never a
    422 blaming the body), and the next request asks the model again."""
    import asyncio
    from types import SimpleNamespace

    from fastapi import HTTPException
    from ray.exceptions import ActorUnavailableError

    from foldray.actors.serve_routes import Ingress
    from foldray.serve_config import ServeConfig

    class TakesRestraints:   # the model handle's method: unreachable, then answering
        def __init__(self) -> None:
            self.calls, self.reachable = 0, False

        async def _answer(self) -> bool:
            self.calls += 1
            if not self.reachable:
                raise ActorUnavailableError("model replica unreachable", b"\0" * 16)
            return False

        def remote(self) -> object:
            return self._answer()

    method = TakesRestraints()
    routes_class = Ingress.func_or_class.__mro__[1]   # the class under Serve's ASGI wrapper
    routes = routes_class(None, SimpleNamespace(takes_restraints=method),
                          ServeConfig(retry_max_s=0.3), None)
    screen = SimpleNamespace(pocket=("A:2",), ligands=[])
    with pytest.raises(HTTPException) as refused:
        asyncio.run(routes._check_constraints(screen))
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "5"}
    assert "model deployment is unavailable (ActorUnavailableError" in refused.value.detail
    assert method.calls >= 2 and routes._constraints is None     # retried, nothing cached
    method.reachable = True
    with pytest.raises(InputError, match="has no constraint embedder"):   # now the real answer
        asyncio.run(routes._check_constraints(screen))
    assert routes._constraints is False


def test_featurizer_stops_a_job_past_its_time_limit_and_reports_it():
    """`featurize_time_limit_s`: a ligand whose conformer search outlives the limit is that
    job's error (the embedding child is killed), not a replica stuck for minutes."""
    from foldray.actors.serve_deployments import Featurizer, FeaturizeRequest

    featurizer = Featurizer.func_or_class(target_cache_size=1, time_limit_s=3.0)
    job = parse_af3_json(json.dumps({
        "name": "slow", "modelSeeds": [1], "dialect": "alphafold3", "version": 2,
        "sequences": [{"protein": {"id": "A", "sequence": TRP_CAGE}},
                      {"ligand": {"id": "B", "smiles": "C" * 150}}]}), source="slow.json")[0]
    started = time.monotonic()
    out = featurizer.featurize(FeaturizeRequest(seeds=(1,), max_tokens=512, job=job))
    assert time.monotonic() - started < 30
    assert out["error"].startswith("slow.json: slow: sequences["), out
    assert "featurization exceeded 3 s" in out["error"], out


def test_job_table_is_bounded_by_bytes_and_finished_jobs_expire(served, tmp_path):
    """A second app with a 40 kB result budget (a 1L2Y result is ~21 kB) and an 8 s TTL."""
    from ray import serve

    from foldray.actors.serve import build_app

    (tmp_path / "token").write_text(TOKEN)
    serve.run(build_app({**TINY, "token_file": str(tmp_path / "token"), "max_stored_bytes": 40_000,
                         "job_ttl_s": 8.0}), name="store", route_prefix="/store")
    try:
        client = FoldrayClient(served.url + "/store", token=TOKEN, timeout=30)
        job = json.loads((INPUTS / "1l2y.json").read_text())
        first = client.predict(job, timeout=180)
        second = client.predict({**job, "name": "second"}, timeout=180)
        with pytest.raises(FoldrayError) as err:          # pushed out by the second result
            client.job(first.job_id)
        assert err.value.status == 410 and "within 40000 bytes" in err.value.message
        assert client.job(second.job_id)["status"] == "done"
        stats = client.stats()["ingress"]
        assert stats["stored_bytes"] <= 40_000 and stats["evicted"] >= 1
        # a result bigger than the whole budget (3 chains): the job fails saying so
        big = {**job, "name": "big", "sequences": [{"protein": {**job["sequences"][0]["protein"],
                                                                "id": ["A", "B", "C"]}}]}
        with pytest.raises(FoldrayError) as err:
            client.predict(big, timeout=180)
        assert err.value.message.startswith("ResultTooLarge: the result is ")
        time.sleep(8.5)
        with pytest.raises(FoldrayError) as err:
            client.job(second.job_id)
        assert err.value.status == 410 and "expired: finished jobs are kept for 8 s" in err.value.message
        assert client.jobs([second.job_id])[0]["status"] == "expired"
        with pytest.raises(FoldrayError) as err:
            client.job("0" * 32)
        assert err.value.status == 404
    finally:
        serve.delete("store")


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
        for name in ("ranking_score", "iptm", "ptm", "ligand_plddt", "min_target_ligand_pae"):
            assert row[name] is not None and math.isfinite(row[name]), (row["ligand_id"], name)
        assert 0 < row["seconds"] < seconds + 1, row     # the server's time for this ligand
    for row in rows[100:]:
        assert row["status"] == "error" and "RDKit could not parse" in row["error"], row
        assert "sequences[1].ligand.smiles" in row["error"]
        assert 0 <= row["seconds"] < 1, row               # refused at once, no worker involved
    assert table.schema.names[:10] == list(SCREEN_SCHEMA.names[:10])   # `foldray screen`'s columns
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
                         "max_batch_size": 1}),
              name="overload", route_prefix="/overload")
    try:
        client = FoldrayClient(served.url + "/overload", token=TOKEN, timeout=30, backoff_s=0.2,
                               max_retries=30)
        job = json.loads((INPUTS / "tiny_protein_ligand_smiles.json").read_text())
        for out in ("/tmp/elsewhere", "file:///tmp/elsewhere", "s3://any/x"):   # no output_allowlist:
            with pytest.raises(FoldrayError) as err:                          # results inline only
                client.submit(job, out=out)
            assert err.value.status == 422 and ": out: this server writes no outputs" in err.value.message
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
        serve_app.app({})           # what `serve run foldray.actors.serve:app` calls
    config = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    monkeypatch.setenv("FOLDRAY_SERVE_TOKEN", TOKEN)
    app = serve_app.build_app(config["applications"][0]["args"])    # every arg is known
    assert app is not None
    with pytest.raises(ValueError, match=r"unknown.*num_gpu"):      # named, before anything starts
        serve_app.build_app({"num_gpu": 1})
    # --insecure-no-auth: the CLI deploys into the running Serve, requests need no token
    monkeypatch.delenv("FOLDRAY_SERVE_TOKEN")
    # runtime settings (dotted keys) reach the served model's Predictor
    assert main(["serve", "--insecure-no-auth", "--port", str(served.port), "--detach",
                 "--model-config", "tiny", "--set", "n_sample=1", "--set", "n_step=2",
                 "--set", "featurizer_num_cpus=0.25", "--set", "model_num_cpus=0.5",
                 "--set", "debug_endpoints=true", "--set", "runtime.chunk_size=16",
                 "--set", "runtime.diffusion_chunk=1"]) == 0
    assert f"ready at http://127.0.0.1:{served.port}/" in capsys.readouterr().out
    client = FoldrayClient(served.url)
    prediction = client.predict(json.loads((INPUTS / "1l2y.json").read_text()), timeout=120)
    assert prediction.summary_confidences["chain_ids"] == ["A"]
    runtime = client.stats()["model"]["runtime"]
    assert (runtime["chunk_size"], runtime["diffusion_chunk"], runtime["precision"]) == (16, 1, "fp32")


def _featurizer_stats(client: FoldrayClient) -> dict[int, dict]:
    """Each featurizer replica's counters, by PID (each stats call reaches one replica)."""
    found: dict[int, dict] = {}
    for _ in range(40):
        stats = client.stats()["featurizer"]
        found[stats["pid"]] = stats
        if len(found) == 2:
            break
    return found


def test_screen_target_without_msa_is_searched_once_through_the_msa_cache(served, tmp_path):
    """`msa_config`: the featurizer searches chains sent without an MSA (real jackhmmer over
    the real 9,674-sequence database, 2 shards on a Ray shard worker), once per target, even
    with 2 featurizer replicas receiving the first ligands at once (the ingress has one
    replica prepare the target first). The model has the constraint embedder, so the screen
    takes a pocket, and each ligand's job carries it as a pocket restraint."""
    from ray import serve

    from foldray.actors.serve import build_app

    (tmp_path / "token").write_text(TOKEN)
    cache = tmp_path / "msa_cache"
    config = tmp_path / "msa.yaml"
    config.write_text(yaml.safe_dump({"shards": 2, "databases": [
        {"name": "uniref90", "url": str(SEQDB / "protein_db.fasta"), "tool": "jackhmmer",
         "role": "unpaired", "max_sequences": 64}]}))
    serve.run(build_app({**TINY, "token_file": str(tmp_path / "token"), "msa_config": str(config),
                         "msa_cache": str(cache), "msa_worker_cpus": 0.25, "featurizer_replicas": 2,
                         "featurizer_num_cpus": 0.125, "output_allowlist": [f"file://{tmp_path}/"],
                         "model_config": {"preset": "tiny", "constraint_embedder": True}}),
              name="msa", route_prefix="/msa")
    try:
        client = FoldrayClient(served.url + "/msa", token=TOKEN, timeout=30)
        globin = json.loads((INPUTS / "102m.json").read_text())["sequences"][0]["protein"]["sequence"]
        ligands = [{"id": f"lig{i}", "smiles": s} for i, s in enumerate(["CCO", "c1ccccc1O", "CC(=O)N"])]
        ligands[2]["pocket"] = "A:93"                                        # its own pocket
        table = client.screen({"protein": globin}, ligands, concurrency=3, progress=False,
                              pocket=["A:64,93"], pocket_distance=8, out=f"file://{tmp_path}/out")
        rows = table.to_pylist()
        assert [r["status"] for r in rows] == ["ok"] * 3, rows
        pockets = []
        for row in rows:
            (data,) = Path(row["output"].removeprefix("file://")).glob("*_data.json")
            (restraint,) = json.loads(data.read_text())["restraints"]       # the ligand is chain B
            pockets.append((restraint["binder"], restraint["residues"], restraint["maxDistance"]))
        assert pockets == [("B", [["A", 64], ["A", 93]], 8.0)] * 2 + [("B", [["A", 93]], 8.0)]
        replicas = _featurizer_stats(client)
        assert len(replicas) == 2, replicas
        # one chain, one database: searched once in all although 3 ligands arrived at the same
        # time at 2 replicas (the other replica read the search from the MSA cache)
        assert sum(r["msa_searched"] for r in replicas.values()) == 1, replicas
        assert client.stats()["ingress"]["targets_prepared"] == 1
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
        assert sum(r["msa_searched"] for r in _featurizer_stats(client).values()) == 1
    finally:
        serve.delete("msa")


def test_fresh_cli_start_warns_of_random_weights_and_sigterm_stops_it_in_one_line(tmp_path):
    """`foldray serve` on its own fresh Ray (no token, no checkpoint): a random-weights
    warning on the console and in the Model replica's log, no "Connecting to existing Serve
    app ... will not be applied" line, and SIGTERM stops it with one line, no stack dump."""
    import subprocess
    import sys

    from tests.plugins.ray_s3 import child_env

    env = child_env()
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:      # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen([sys.executable, "-m", "foldray.jobs.cli", "serve", "--insecure-no-auth",
                                 "--port", str(port), "--set", "featurizer_num_cpus=0.25",
                                 "--set", "model_num_cpus=0.5"], env=env, stdout=handle,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400    # a whole Ray start on 2 shared cores
        while "foldray serve: ready at" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        while not any("WARNING" in line and "RANDOM weights" in line    # the replica's line
                      for line in log.read_text().splitlines()):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    lines = text.splitlines()
    assert any(line.startswith("warning: foldray serve: no checkpoint") for line in lines)
    assert any("WARNING" in line and "RANDOM weights" in line and "Model" in line for line in lines)
    assert "Connecting to existing Serve app" not in text and "will not be applied" not in text
    assert [line for line in lines if line.startswith("foldray serve: stop")] == ["foldray serve: stopped"]
    for marker in ("SIGTERM received", "PC: @", "Traceback", "frames"):
        assert marker not in text, text[-3000:]
