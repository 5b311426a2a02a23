"""Featurized jobs on disk or object storage: one `.npz` per job, written atomically.

Arrays only (loaded with allow_pickle=False, so a features file cannot run code), plus
`layout.npz` (the token/atom layout the writer needs to turn a prediction into mmCIF) and
a JSON sidecar with the job itself (AF3 JSON) and its summary. The sidecar is written
last: its presence marks the job as finished, so a rerun skips it, a crash never leaves a
file that looks complete, and `foldray predict-batch` takes these folders as inputs
(the model runs on the stored features; nothing is featurized again).
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from foldray.io import storage

if TYPE_CHECKING:
    from foldray.features.tokenize import TokenizedStructure

FEATURES_FILE = "features.npz"
LAYOUT_FILE = "layout.npz"
DONE_FILE = "features.json"
_CHAINS_KEY = "chains_json"   # layout.npz: the ChainInfo records, as a JSON string


def features_url(out_url: str, safe_name: str) -> str:
    return storage.join(out_url, safe_name, FEATURES_FILE)


def done_url(out_url: str, safe_name: str) -> str:
    return storage.join(out_url, safe_name, DONE_FILE)


def layout_url(out_url: str, safe_name: str) -> str:
    return storage.join(out_url, safe_name, LAYOUT_FILE)


def is_sidecar(url: str) -> bool:
    """Whether an input file is the completion marker of a stored job (a featurize output)."""
    return url.rsplit("/", 1)[-1] == DONE_FILE


def is_done(out_url: str, safe_name: str) -> bool:
    return storage.exists(done_url(out_url, safe_name))


def done_summary(out_url: str, safe_name: str) -> dict[str, Any] | None:
    """The sidecar of a finished job (its `input_sha256` names the input), None if absent."""
    return read_sidecar(done_url(out_url, safe_name))


def read_sidecar(url: str) -> dict[str, Any] | None:
    """A sidecar's summary (None: absent or not a JSON object)."""
    try:
        value = json.loads(storage.read_text(url))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def save_features(out_url: str, safe_name: str, features: dict[str, np.ndarray],
                  summary: dict[str, Any], tokens: TokenizedStructure | None = None) -> str:
    """Write features (and the layout of `tokens`) then the completion marker (the sidecar,
    with `summary`, which should hold the input's `input_sha256`); returns the features URL."""
    url = features_url(out_url, safe_name)
    storage.write_bytes_atomic(url, _npz_bytes(features))
    if tokens is not None:
        storage.write_bytes_atomic(layout_url(out_url, safe_name), _npz_bytes(layout_arrays(tokens)))
    storage.write_text_atomic(done_url(out_url, safe_name), json.dumps(summary, indent=2))
    return url


def load_features(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def layout_arrays(tokens: TokenizedStructure) -> dict[str, np.ndarray]:
    """A TokenizedStructure as plain arrays (its chains as one JSON string)."""
    arrays = {f.name: getattr(tokens, f.name) for f in dataclasses.fields(tokens) if f.name != "chains"}
    chains = [dataclasses.asdict(chain) for chain in tokens.chains]
    return arrays | {_CHAINS_KEY: np.array(json.dumps(chains))}


def load_layout(url: str) -> TokenizedStructure:
    """The layout written by `save_features` (a missing key is a KeyError: not our file)."""
    from foldray.features.tokenize import ChainInfo, TokenizedStructure

    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    chains = tuple(ChainInfo(**(chain | {"residue_names": tuple(chain["residue_names"])}))
                   for chain in json.loads(str(arrays.pop(_CHAINS_KEY))))
    return TokenizedStructure(chains=chains, **arrays)
