"""Protenix's ConstraintEmbedder on random weights and restraint features: a fixture for CI.

Runs INSIDE the protenix 2.0.0 virtual environment (no foldray): builds the embedder from the
reference's own config code (`protenix_base_constraint_v0.5.0` resized to the CPU-small
`tiny-protenix` widths, via reference_protenix.build_config), draws random weights for every
parameter (the zero-initialised projections included), feeds pocket / contact / atom-contact
features in Protenix's continuous encoding plus the "no substructure" feature its featurizer
writes (one-hot of -1: all zero), and saves weights (under Protenix's `constraint_embedder.*`
names), inputs and the z_constraint it returns to tests/fixtures/equivalence/constraint.npz.
tests/lib/model/test_constraint_embedder.py imports the weights with foldray's importer and
compares.

With `--features INPUT.json` it instead runs Protenix's own inference featurizer
(reference_features_protenix.featurize) on an AF3 JSON job with foldray `restraints`, translated
to Protenix's `constraint` field (one pocket: binder_chain {entity, copy}, contact_residues
[{entity, copy, position}], max_distance; contacts: entity/copy/position[/atom] 1 and 2,
max_distance), and saves its `constraint_feature` (pocket, contact, contact_atom) for
tests/lib/inputs/test_restraints.py to compare with foldray's features of the same job.

Usage: /tmp/ref-ptx/bin/python benchmarks/equivalence/reference_constraint.py OUT.npz [--seed N]
       /tmp/ref-ptx/bin/python benchmarks/equivalence/reference_constraint.py OUT.npz --features IN.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("LAYERNORM_TYPE", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_TOKEN = 11


def features(generator: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    """A few restraints at random token pairs, as Protenix's generate_spec_constraint writes them."""
    pocket = torch.zeros(n, n, 1)
    binder = torch.arange(n - 3, n)                                 # a 3-token ligand binds
    for j in torch.randint(0, n - 3, (3,), generator=generator).tolist():
        pocket[binder, j, 0] = float(torch.randint(4, 12, (1,), generator=generator))
    contact, contact_atom = torch.zeros(n, n, 2), torch.zeros(n, n, 2)
    for target in (contact, contact_atom):
        for _ in range(2):
            i, j = torch.randint(0, n, (2,), generator=generator).tolist()
            d = float(torch.rand(1, generator=generator) * 20 + 2)
            target[i, j, 1] = target[j, i, 1] = d
    return {"pocket": pocket, "contact": contact, "contact_atom": contact_atom}


def protenix_constraint(doc: dict) -> dict:
    """foldray `restraints` -> Protenix's `constraint` (its JSON allows one pocket)."""
    where = {}
    for index, entry in enumerate(doc["sequences"]):
        (_, body), = entry.items()
        ids = body["id"] if isinstance(body["id"], list) else [body["id"]]
        where.update({chain_id: (index + 1, copy + 1) for copy, chain_id in enumerate(ids)})
    constraint: dict = {"contact": []}
    for restraint in doc.get("restraints", []):
        if restraint["type"] == "pocket":
            entity, copy = where[restraint["binder"]]
            residues = [dict(zip(("entity", "copy"), where[c], strict=True), position=r)
                        for c, r, *_ in restraint["residues"]]
            constraint["pocket"] = {"binder_chain": {"entity": entity, "copy": copy},
                                    "contact_residues": residues, "max_distance": restraint["maxDistance"]}
        else:
            pair: dict = {"max_distance": restraint["maxDistance"]}
            for side, (chain_id, residue, *atom) in enumerate(restraint["residues"], start=1):
                entity, copy = where[chain_id]
                pair.update({f"entity{side}": entity, f"copy{side}": copy, f"position{side}": residue})
                if atom:
                    pair[f"atom{side}"] = atom[0]
            constraint["contact"].append(pair)
    return constraint


def reference_features(input_path: Path, out: Path) -> None:
    import json

    import reference_features_protenix as rf
    from protenix_ccd import CCD_ROOT, ensure_ccd

    doc = json.loads(input_path.read_text())
    job, codes = rf.af3_to_protenix(doc, input_path.resolve().parent)
    job["constraint"] = protenix_constraint(doc)
    os.environ["PROTENIX_ROOT_DIR"] = str(ensure_ccd(codes, CCD_ROOT))
    features, _ = rf.featurize(job, int(doc.get("modelSeeds", [1])[0]))
    constraint = features["constraint_feature"]
    arrays = {f"constraint_{k}": np.asarray(constraint[k], np.float32)
              for k in ("pocket", "contact", "contact_atom")}
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape} {int(np.count_nonzero(v))} set"
                                       for k, v in arrays.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=Path, default=None,
                        help="an AF3 JSON job with restraints: save Protenix's constraint features of it "
                             "instead (default: none, the embedder fixture)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.features is not None:
        reference_features(args.features, args.out)
        return
    import reference_protenix as rp
    from protenix.data.constraint.constraint_featurizer import ConstraintFeaturizer
    from protenix.model.modules.embedders import ConstraintEmbedder

    rp.MODEL_NAME = "protenix_base_constraint_v0.5.0"
    config = rp.build_config(tiny=True)
    embedder = ConstraintEmbedder(**config.model.constraint_embedder).eval()
    rp.randomize(embedder, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    inputs = features(generator, N_TOKEN)
    none = torch.full((N_TOKEN, N_TOKEN), -1, dtype=torch.long)
    inputs["substructure"] = ConstraintFeaturizer.one_hot_encoder(
        none, config.model.constraint_embedder.substructure_embedder.n_classes)
    batched = {k: v[None] for k, v in inputs.items()}
    with torch.no_grad():
        z = embedder(batched)
    weights = rp.compact(dict(embedder.state_dict()))        # float16 where exact (randomize rounds)
    out = {f"weight:constraint_embedder.{k}": v.numpy() for k, v in weights.items()}
    out.update({f"input:{k}": v.numpy() for k, v in batched.items()})
    out["output:z_constraint"] = z.numpy()
    out["c_z"] = np.array(config.c_z)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}: {len(out)} arrays, z {tuple(z.shape)}, |z| {z.abs().mean():.4f}")


if __name__ == "__main__":
    main()
