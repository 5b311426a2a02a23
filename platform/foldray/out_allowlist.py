"""Where a Serve request may have outputs written: the operator's allowlist (no Ray).

A request's `out` is untrusted. Handed to fsspec as is, `simplecache::file://...`,
`dir::`, `memory://` or `http://` would make the server write to its own disk or call
internal URLs, and any bucket the server's role can write would do. So an `out` URL is
accepted only when, after normalisation, it lies under an entry of `output_allowlist`
(a list of `scheme://bucket/prefix/` URLs; empty: results are returned inline only):

- one plain URL: no `::` chaining, no query, fragment, `%`-escapes, backslashes or
  whitespace; the scheme is an object store (s3, gs, gcs, az, abfs, abfss), or `file`
  (a local path: how a developer opts in to writing on the server's disk);
- no `.` or `..` path segments; repeated slashes are collapsed;
- the prefix matches whole path segments: `s3://b/pre/` allows `s3://b/pre/x`, never
  `s3://b/prefix-evil`; local paths are compared after resolving symlinks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foldray.errors import InputError

OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "gcs", "az", "abfs", "abfss"})
SCHEMES = OBJECT_STORE_SCHEMES | {"file"}
MAX_URL_CHARS = 2048
_BAD_CHARS = re.compile(r"[\s\\%?#\x00-\x1f\x7f]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


@dataclass(frozen=True)
class OutLocation:
    """A normalised output URL: scheme, bucket ('' for local paths), path segments."""

    scheme: str
    bucket: str
    parts: tuple[str, ...]

    @property
    def url(self) -> str:
        path = "/".join(self.parts)
        if self.scheme == "file":
            return f"file:///{path}"
        return f"{self.scheme}://{self.bucket}/{path}" if path else f"{self.scheme}://{self.bucket}"

    def within(self, root: OutLocation) -> bool:
        return ((self.scheme, self.bucket) == (root.scheme, root.bucket)
                and self.parts[:len(root.parts)] == root.parts)


def parse_out_url(url: str) -> OutLocation:
    """Normalise an output URL; ValueError saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("expected a URL string")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"the URL is longer than {MAX_URL_CHARS} characters")
    if "::" in url:
        raise ValueError("chained URLs (`::`) are not accepted")
    if _BAD_CHARS.search(url):
        raise ValueError("the URL has a query, fragment, %-escape, backslash, space or control "
                         "character")
    if "://" not in url:
        if not url.startswith("/"):
            raise ValueError("expected an object-storage URL such as s3://bucket/prefix")
        scheme, rest = "file", url
    else:
        scheme, rest = url.split("://", 1)
        if not _SCHEME.match(scheme):
            raise ValueError("the URL has no valid scheme")
        scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not an object store ({', '.join(sorted(SCHEMES))})")
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise ValueError("a file URL must name an absolute path on the server (file:///path)")
        bucket, path = "", rest
    else:
        bucket, _, path = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise ValueError("the URL has no valid bucket name")
    parts = tuple(p for p in path.split("/") if p)
    if any(p in (".", "..") for p in parts):
        raise ValueError("`.` and `..` path segments are not accepted")
    if scheme == "file":         # compare where the server would really write
        parts = tuple(p for p in os.path.realpath("/" + "/".join(parts)).split("/") if p)
    return OutLocation(scheme, bucket, parts)


class OutAllowlist:
    """The output locations a server accepts; built once at start-up from its config."""

    def __init__(self, entries: Sequence[str] | None) -> None:
        roots = []
        for entry in entries or ():
            try:
                roots.append(parse_out_url(entry))
            except ValueError as err:
                raise ValueError(f"output_allowlist entry {entry!r}: {err}") from None
        self.roots = tuple(roots)

    def check(self, url: str, *, source: str = "request", field: str = "out") -> str:
        """The normalised URL to write to, or InputError (HTTP 422) naming the field."""
        try:
            location = parse_out_url(url)
        except ValueError as err:
            raise InputError(str(err), source=source, field=field) from None
        if not self.roots:
            raise InputError("this server writes no outputs for requests (its output_allowlist "
                             "is empty): leave out unset to get results inline",
                             source=source, field=field)
        if not any(location.within(root) for root in self.roots):
            raise InputError(f"{location.url} is not under an output location this server allows "
                             "(see its output_allowlist)", source=source, field=field)
        return location.url


def server_outputs(config: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """A server's (`out`, `output_allowlist`) settings, checked at start-up (ValueError
    naming the setting). Its own `out` is always allowed; `file:///path/` entries allow
    requests to write on the server's disk (local development)."""
    if "allow_local_out" in config:
        raise ValueError("the setting allow_local_out was replaced by output_allowlist: list the "
                         "URLs requests may write under, e.g. [\"file:///scratch/out/\"]")
    entries = config.get("output_allowlist") or []
    if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
        raise ValueError("setting output_allowlist: expected a list of URL strings")
    out = config.get("out")
    if out:
        try:
            out = parse_out_url(out).url
        except ValueError as err:
            raise ValueError(f"setting out: {err}") from None
    entries = [*entries, *([out] if out else [])]
    OutAllowlist(entries)                 # a bad entry stops the start, naming it
    return out or None, entries
