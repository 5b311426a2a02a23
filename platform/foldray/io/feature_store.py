"""Featurized jobs on disk or object storage: one `.npz` per job, written atomically.

Arrays only (loaded with allow_pickle=False, so a features file cannot run code), plus
`layout.npz` (the token/atom layout the writer needs to turn a prediction into mmCIF) and
a JSON sidecar with the job itself (AF3 JSON) and its summary. The sidecar is written
last: its presence marks the job as finished, so a rerun skips it, a crash never leaves a
file that looks complete, and `foldray predict-batch` takes these folders as inputs
(the model runs on the stored features; nothing is featurized again).

The sidecar also records the featurization switches the features were made with
(`featurization`: `FeaturizationConfig.to_dict()`), so a model expecting another
featurization (imported OpenFold3 / Protenix weights expect their reference's) refuses them
instead of silently predicting from features it was not trained on (`check_featurization`).
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from foldray.errors import InputError
from foldray.features.config import DEFAULT_FEATURIZATION, FeaturizationConfig
from foldray.io import storage

if TYPE_CHECKING:
    from foldray.features.tokenize import TokenizedStructure

FEATURES_FILE = "features.npz"
LAYOUT_FILE = "layout.npz"
DONE_FILE = "features.json"
_CHAINS_KEY = "chains_json"   # layout.npz: the ChainInfo records, as a JSON string
FEATURIZATION_KEY = "featurization"   # sidecar: FeaturizationConfig.to_dict() of the features
REFEATURIZE = ("run foldray featurize again with --overwrite and the same --checkpoint / "
               "--model-config as predict-batch")


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


# --------------------------------------------------------------------------- featurization


_PRESETS = {"alphafold3": FeaturizationConfig.alphafold3(), "openfold3": FeaturizationConfig.openfold3(),
            "protenix": FeaturizationConfig.protenix()}


def featurization_name(config: FeaturizationConfig) -> str:
    """The preset a featurization equals (alphafold3, openfold3, protenix), else "custom"."""
    return next((name for name, preset in _PRESETS.items() if preset == config), "custom")


def stored_featurization(summary: dict[str, Any]) -> FeaturizationConfig:
    """The featurization a sidecar records; an InputError (field `featurization`) when it
    records none or a malformed one. Messages name switches, never the stored values of
    malformed ones (the file is not quoted).

    A sidecar without the key (written before featurization was recorded) is refused, not
    taken for AlphaFold 3's: git history shows `foldray featurize` made non-AF3 features
    without recording them (since 1fb87e0 it featurized with `--model-config`'s
    featurization, e.g. tiny-openfold3 or full-protenix), and until 9b756e6 its AF3
    featurization was not today's (covalent ligands kept their leaving atoms, now
    `ligand_leaving_atoms="keep"`). Its featurization is unknown, so accepting it for any
    model would reopen the silent parity hole this check closes; featurizing again costs
    CPU time, a silently wrong prediction costs more.
    """
    if FEATURIZATION_KEY not in summary:
        raise InputError("features stored without a record of their featurization (by a foldray "
                         "from before it was recorded), so they cannot be checked against the "
                         f"model's; {REFEATURIZE}", field=FEATURIZATION_KEY)
    value = summary[FEATURIZATION_KEY]
    if not isinstance(value, dict):
        raise InputError(f"the stored featurization is not a JSON object; {REFEATURIZE}",
                         field=FEATURIZATION_KEY)
    known = {f.name: f for f in dataclasses.fields(FeaturizationConfig)}
    if any(key not in known for key in value):
        raise InputError("the stored featurization has a switch this foldray does not know "
                         f"(features from another foldray version?); {REFEATURIZE}",
                         field=FEATURIZATION_KEY)
    for name, default in dataclasses.asdict(DEFAULT_FEATURIZATION).items():
        if name not in value:
            raise InputError(f"the stored featurization does not set switch {name} (features "
                             f"from an older foldray); {REFEATURIZE}", field=FEATURIZATION_KEY)
        if type(value[name]) is not type(default):   # bool is not int here, "1" is not True
            kind = "true or false" if isinstance(default, bool) else "a string"
            raise InputError(f"the stored featurization switch {name} is not {kind}; {REFEATURIZE}",
                             field=FEATURIZATION_KEY)
    try:
        return FeaturizationConfig.from_dict(value)
    except ValueError:   # a value outside a switch's choices (its message quotes the value)
        bad = next(name for name in known if not _allowed(name, value[name]))
        raise InputError(f"the stored featurization switch {bad} has a value this foldray does "
                         f"not know; {REFEATURIZE}", field=FEATURIZATION_KEY) from None


def _allowed(name: str, value: Any) -> bool:
    try:
        FeaturizationConfig(**{name: value})
    except ValueError:
        return False
    return True


def check_featurization(summary: dict[str, Any], expected: FeaturizationConfig | None) -> None:
    """Refuse stored features made with another featurization than `expected`, the model's
    (None: AlphaFold 3's, as everywhere else). An InputError, field `featurization`, naming
    the switches that differ with both values (switch values only: nothing else is quoted)."""
    stored, expected = stored_featurization(summary), expected or DEFAULT_FEATURIZATION
    if stored == expected:
        return
    have, want = stored.to_dict(), expected.to_dict()
    differing = ", ".join(f"{name} {have[name]!r} -> {want[name]!r}"
                          for name in have if have[name] != want[name])
    raise InputError(f"features stored with the {featurization_name(stored)} featurization, the "
                     f"model expects {featurization_name(expected)} (switches, stored -> expected: "
                     f"{differing}); {REFEATURIZE}", field=FEATURIZATION_KEY)
