"""The Serve ingress's job table (foldray.job_store): bytes, count and age bounds, keys."""

import json
import math

import pytest

from foldray.job_store import RECORD_OVERHEAD, JobRecord, JobStore, KeyReused


class Clock:
    """Time that moves only when the test says so (the store takes any clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _result(n_bytes: int) -> bytes:
    """A result object of about n_bytes of encoded JSON, like per-token confidences."""
    return b'{"confidences": {"pae": [' + b"0.5, " * max(0, (n_bytes - 32) // 5) + b"0.5]}}"


def _store(max_bytes: int = 10 << 20, max_jobs: int = 100, ttl_s: float = 60.0) -> tuple[JobStore, Clock]:
    clock = Clock()
    return JobStore(max_jobs=max_jobs, max_bytes=max_bytes, ttl_s=ttl_s, clock=clock), clock


def test_bounded_by_bytes_oldest_finished_result_goes_first():
    one = _result(2 << 20)                       # a 2 MiB result
    store, clock = _store(max_bytes=5 << 20)
    records = []
    for i in range(4):
        record = store.add(JobRecord(id=f"j{i}", name=f"job{i}", kind="predict"))
        clock.now += 1
        store.finish(record, "done", result=one)
        records.append(record)
        assert store.nbytes <= 5 << 20
    assert [r.id for r in store.values()] == ["j2", "j3"]
    assert store.get("j0") is None and "dropped to keep the server's job table within" in \
        store.gone_reason("j0")
    assert store.counters["evicted"] == 2
    view = json.loads(store.view_json("j1"))
    assert view["status"] == "expired" and "give an `out` URL" in view["error"]
    assert json.loads(store.view_json("nope")) == {"id": "nope", "status": "unknown"}


def test_running_jobs_are_never_dropped_and_count_is_bounded():
    store, clock = _store(max_bytes=3 * RECORD_OVERHEAD, max_jobs=3)
    running = [store.add(JobRecord(id=f"r{i}", name="r", kind="screen")) for i in range(5)]
    assert len(store) == 5                         # over both bounds, but nothing finished yet
    for record in running:
        clock.now += 1
        store.finish(record, "done", result=b'{"metrics": {}}')
    assert len(store) <= 3 and store.nbytes <= 3 * RECORD_OVERHEAD + 100
    assert store.gone_reason("r0") is not None


def test_finished_jobs_expire_after_the_ttl_with_a_clear_reason():
    store, clock = _store(ttl_s=60)
    written = store.add(JobRecord(id="w", name="w", kind="predict"))
    inline = store.add(JobRecord(id="i", name="i", kind="predict"))
    store.finish(written, "done", result=b'{"output": "s3://b/p/w/x"}', output="s3://b/p/w/x")
    clock.now += 30
    store.finish(inline, "done", result=_result(1000))
    clock.now += 31                                  # w is 61 s old, i 31 s
    assert store.get("w") is None and store.get("i") is not None
    reason = store.gone_reason("w")
    assert "expired: finished jobs are kept for 60 s" in reason
    assert "its outputs were written to s3://b/p/w/x" in reason   # the result is still reachable
    clock.now += 30
    assert "i" not in store and store.counters["expired"] == 2 and store.nbytes == 0
    again = store.add(JobRecord(id="w", name="w", kind="predict"))   # the key submitted again
    assert store.get("w") is again and store.gone_reason("w") is None


def test_a_result_larger_than_the_budget_fails_the_job_with_a_message():
    store, _ = _store(max_bytes=1 << 20)
    record = store.add(JobRecord(id="big", name="big", kind="predict"))
    store.finish(record, "done", result=_result(2 << 20))
    assert record.status == "failed" and record.result is None
    assert record.error.startswith("ResultTooLarge: the result is ") and "`out` URL" in record.error
    assert store.nbytes < 2 * RECORD_OVERHEAD


def test_seventy_mib_of_confidences_do_not_pile_up():
    """The issue's case: 2,048-token jobs with ~72 MiB results each, a 512 MiB budget."""
    store, clock = _store(max_bytes=512 << 20, max_jobs=10_000, ttl_s=3600)
    result = _result(72 << 20)
    for i in range(20):
        record = store.add(JobRecord(id=f"j{i}", name="big", kind="predict"))
        clock.now += 1
        store.finish(record, "done", result=result)
    assert store.nbytes <= 512 << 20 and len(store) == 7
    assert sum(len(r.result or b"") for r in store.values()) <= 512 << 20


def test_idempotency_keys_are_tied_to_the_request():
    store, _ = _store()
    store.add(JobRecord(id="k", name="a", kind="predict", request_hash="h1"))
    assert store.find("k", "h1").name == "a"
    with pytest.raises(KeyReused):
        store.find("k", "h2")
    assert store.find("other", "h1") is None
    assert [r is not None for r in store.find_all(["k", "new"], ["h1", "h3"])] == [True, False]
    with pytest.raises(KeyReused) as err:             # a key repeated within one request
        store.find_all(["x", "y", "x"], ["h1", "h2", "h9"])
    assert err.value.index == 2
    with pytest.raises(KeyReused) as err:
        store.find_all(["new", "k"], ["h1", "h2"])
    assert err.value.index == 1


def test_record_json_splices_result_and_keeps_nan():
    store, _ = _store()
    record = store.add(JobRecord(id="n", name="x", kind="screen",
                                 ligand={"id": "Lig", "output_name": "lig_2"}))
    assert json.loads(record.to_json())["status"] == "queued"
    store.finish(record, "done", result=json.dumps({"metrics": {"iptm": math.nan}},
                                                   allow_nan=True).encode())
    view = json.loads(record.to_json())
    assert view["id"] == "n" and view["ligand"]["output_name"] == "lig_2"
    assert math.isnan(view["metrics"]["iptm"]) and view["status"] == "done"
    store.finish(record, "done", result=b"{}")
    assert json.loads(record.to_json())["status"] == "done"


def test_states_move_queued_running_finished_only():
    store, _ = _store()
    record = store.add(JobRecord(id="s", name="s", kind="predict"))
    assert record.status == "queued" and store.statuses() == {"queued": 1}
    store.start(record)
    assert store.statuses() == {"running": 1}
    with pytest.raises(ValueError, match="is running, not queued"):
        store.start(record)
    with pytest.raises(ValueError, match="'running' is not a finished status"):
        store.finish(record, "running")
    store.finish(record, "error", error="request: s: sequences: bad")
    assert store.statuses() == {"error": 1} and record.completions == 1
    with pytest.raises(ValueError, match="is error, not queued"):
        store.start(record)
