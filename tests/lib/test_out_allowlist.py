"""Where Serve requests may write outputs (foldray.out_allowlist), without a server."""

import os

import pytest

from foldray.errors import InputError, error_line
from foldray.out_allowlist import OutAllowlist, parse_out_url, server_outputs

BUCKET = "s3://results/pre/"


def _refused(allowlist: OutAllowlist, url: str) -> InputError:
    with pytest.raises(InputError) as err:
        allowlist.check(url)
    assert err.value.field == "out" and ": out: " in error_line(err.value), url
    return err.value


def test_no_allowlist_means_results_inline_only():
    allowlist = OutAllowlist(None)
    for url in ("s3://results/pre/x", "file:///tmp/x", "/tmp/x"):
        assert "output_allowlist is empty" in _refused(allowlist, url).message


def test_object_store_prefix_on_segment_boundary_and_normalised():
    allowlist = OutAllowlist([BUCKET])
    assert allowlist.check("s3://results/pre/run1") == "s3://results/pre/run1"
    assert allowlist.check("s3://results/pre") == "s3://results/pre"
    assert allowlist.check("S3://results//pre///run1/") == "s3://results/pre/run1"   # collapsed
    for url in ("s3://results/prefix-evil", "s3://results/pre-x/y", "s3://results/other",
                "s3://other/pre/x", "s3://results", "gs://results/pre/x",
                "s3://results@evil/pre/x", "s3://user:pw@results/pre/x"):
        _refused(allowlist, url)


def test_chained_local_internal_and_tricky_urls_are_refused():
    allowlist = OutAllowlist([BUCKET])
    cases = {
        "simplecache::s3://results/pre/x": "chained", "filecache::s3://results/pre/x": "chained",
        "dir::s3://results/pre": "chained", "simplecache::file:///tmp/x": "chained",
        "memory://results/pre/x": "not an object store", "http://127.0.0.1:8500/v1/kv": "not an object",
        "https://169.254.169.254/latest/meta-data": "not an object store",
        "ftp://results/pre/x": "not an object store", "local:///tmp/x": "not an object store",
        "s3://results/pre/../../other": "`..`", "s3://results/pre/./x": "`..`",
        "s3://results/pre/%2e%2e/x": "%-escape", "s3://results/pre/x?versionId=1": "query",
        "s3://results/pre/x#frag": "query", "s3://results/pre\\..\\x": "backslash",
        "s3://results/pre/a b": "space", "relative/path": "object-storage URL",
        "": "expected a URL", "s3://" + "a" * 3000: "longer than",
    }
    for url, why in cases.items():
        assert why in _refused(allowlist, url).message, url


def test_local_paths_only_under_a_file_entry_and_after_symlinks(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/etc")
    allowlist = OutAllowlist([f"file://{allowed}/"])
    real = os.path.realpath(allowed)
    assert allowlist.check(f"file://{allowed}/run1") == f"file://{real}/run1"
    assert allowlist.check(f"{allowed}/run1") == f"file://{real}/run1"           # plain path
    assert allowlist.check(f"file://localhost{allowed}/run1") == f"file://{real}/run1"
    for url in (f"file://{tmp_path}/allowed-evil", f"{allowed}/escape/x", "/tmp/elsewhere",
                f"file://{allowed}/../x", "file://otherhost/tmp/x", "file:relative"):
        _refused(allowlist, url)
    assert OutAllowlist([BUCKET]).check(BUCKET + "x")          # object stores stay separate
    _refused(OutAllowlist([BUCKET]), f"{allowed}/run1")


def test_bad_entries_and_settings_stop_the_start():
    for entry in ("memory://x/", "simplecache::s3://b/p", "http://host/p", "relative"):
        with pytest.raises(ValueError, match="output_allowlist entry"):
            OutAllowlist([entry])
    with pytest.raises(ValueError, match="replaced by output_allowlist"):
        server_outputs({"allow_local_out": True})
    with pytest.raises(ValueError, match="list of URL strings"):
        server_outputs({"output_allowlist": "s3://b/p"})
    with pytest.raises(ValueError, match="setting out"):
        server_outputs({"out": "memory://x"})
    out, entries = server_outputs({"out": "s3://b/preds/", "output_allowlist": [BUCKET]})
    assert out == "s3://b/preds" and entries == [BUCKET, "s3://b/preds"]   # its own out is allowed
    assert OutAllowlist(entries).check("s3://b/preds/x") == "s3://b/preds/x"
    assert parse_out_url("gs://b/a//b").url == "gs://b/a/b"
