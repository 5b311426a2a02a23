"""Rename the ground truth to match a prediction (SI 4.2): chains, then atoms.

Identical chains and identical ligands can be named in any order, and so can atoms that
chemistry cannot tell apart; the losses must not punish the model for picking another
equally right naming. Following SI 4.2 (AlphaFold-Multimer SI 7.3), with the mini-rollout
structure as the prediction:

1. Chains: an anchor chain (a polymer of the least repeated entity, most resolved) is
   superposed onto each ground-truth copy it may be; under each superposition every other
   chain greedily takes the unassigned copy of its entity whose centroid is closest; the
   assignment with the lowest RMSD over token centre atoms wins.
2. Atoms: the renamed truth is superposed onto the prediction and every residue takes
   the atom-naming symmetry (foldray.features.symmetry) with the lowest squared error.

Inputs come from foldray.features.targets (gt_copy_coords, gt_copy_mask, copy_self,
copy_allowed, atom_perm_offset). Everything here is without gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from foldray.model.losses import weighted_rigid_align

PERMUTATION_KEYS = ("gt_copy_coords", "gt_copy_mask", "copy_self", "copy_allowed",
                    "atom_perm_offset")


def _kabsch(x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation R [3, 3] and translation t [3] minimising sum w |R x + t - y|^2 (proper)."""
    w = w.double()[:, None]
    x, y = x.double(), y.double()
    total = w.sum().clamp(min=1e-12)
    mu_x, mu_y = (w * x).sum(0) / total, (w * y).sum(0) / total
    h = (w * (x - mu_x)).T @ (y - mu_y)
    u, _, vh = torch.linalg.svd(h)
    fix = torch.ones(3, dtype=x.dtype, device=x.device)
    if torch.linalg.det(vh.T @ u.T) < 0:     # a reflection: flip the weakest axis
        fix[2] = -1.0
    rot = vh.T @ torch.diag(fix) @ u.T
    return rot, mu_y - rot @ mu_x


def _centroid_distance(pred: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    if not mask.any():
        return pred.new_tensor(float("inf"))
    return (pred[mask].mean(0) - truth[mask].mean(0)).norm()


def assign_chains(x_pred: Tensor, example: Mapping[str, Tensor]) -> Tensor:
    """Copy slot per token [N_token] (int64) for one unbatched example (module doc, step 1)."""
    token_mask = example["token_mask"].bool()
    slots = example["copy_self"].long().clone()
    allowed = example["copy_allowed"].bool()
    if not bool((allowed[token_mask].sum(-1) > 1).any()):
        return slots
    centre = example["token_centre_atom"].long()
    asym = example["asym_id"]
    pred_centre = x_pred[centre].double()                                   # [N_token, 3]
    gt_centre = example["gt_copy_coords"][:, centre].double()               # [C, N_token, 3]
    gt_ok = example["gt_copy_mask"][:, centre].bool() & token_mask           # [C, N_token]

    chains = []
    for chain_id in torch.unique(asym[token_mask]).tolist():
        tokens = torch.nonzero((asym == chain_id) & token_mask).squeeze(-1)
        first = int(tokens[0])
        chains.append({
            "tokens": tokens, "entity": int(example["entity_id"][first]),
            "self": int(slots[first]), "slots": torch.nonzero(allowed[first]).squeeze(-1).tolist(),
            "polymer": not bool(example["is_ligand"][first]),
            "resolved": int(gt_ok[int(slots[first]), tokens].sum())})
    with_truth = [c for c in chains if c["resolved"] > 0]
    if not with_truth:
        return slots
    anchor = min(with_truth, key=lambda c: (not c["polymer"], len(c["slots"]), -c["resolved"]))

    best: tuple[float, dict[int, int]] | None = None
    for anchor_slot in anchor["slots"]:
        ok = gt_ok[anchor_slot, anchor["tokens"]]
        if not ok.any():
            continue
        rot, shift = _kabsch(pred_centre[anchor["tokens"]][ok],
                             gt_centre[anchor_slot, anchor["tokens"]][ok], ok.new_ones(int(ok.sum())))
        moved = pred_centre @ rot.T + shift
        taken: set[tuple[int, int]] = {(anchor["entity"], anchor_slot)}
        choice = {id(anchor): anchor_slot}
        fixed = [c for c in chains if len(c["slots"]) == 1 and c is not anchor]
        for chain in fixed:
            choice[id(chain)] = chain["self"]
            taken.add((chain["entity"], chain["self"]))
        for chain in sorted((c for c in chains if id(c) not in choice), key=lambda c: -c["resolved"]):
            free = [k for k in chain["slots"] if (chain["entity"], k) not in taken] or [chain["self"]]
            t = chain["tokens"]
            k = min(free, key=lambda k: float(_centroid_distance(moved[t], gt_centre[k, t], gt_ok[k, t])))
            choice[id(chain)] = k
            taken.add((chain["entity"], k))
        sq, n = 0.0, 0
        for chain in chains:
            k, t = choice[id(chain)], chain["tokens"]
            ok = gt_ok[k, t]
            sq += float(((moved[t][ok] - gt_centre[k, t][ok]) ** 2).sum())
            n += int(ok.sum())
        rmsd = (sq / max(n, 1)) ** 0.5
        if best is None or rmsd < best[0]:
            best = (rmsd, {id(c): choice[id(c)] for c in chains})
    if best is not None:
        for chain in chains:
            slots[chain["tokens"]] = best[1][id(chain)]
    return slots


def choose_atom_symmetry(x_pred: Tensor, x_gt: Tensor, gt_mask: Tensor, offsets: Tensor,
                         residue: Tensor) -> tuple[Tensor, Tensor]:
    """Per residue the symmetry row with the lowest squared error (module doc, step 2).

    x_pred, x_gt [N_atom, 3]; gt_mask [N_atom]; offsets [P, N_atom]; residue [N_atom] ids.
    Returns the renamed truth and its mask (in the truth's own frame).
    """
    n_atom = x_gt.shape[0]
    if offsets.shape[0] < 2 or not gt_mask.any():
        return x_gt, gt_mask
    index = (torch.arange(n_atom, device=x_gt.device) + offsets.long()).clamp(0, n_atom - 1)
    aligned = weighted_rigid_align(x_gt.double(), x_pred.double(), gt_mask.double())
    candidate = aligned[index]                                               # [P, N_atom, 3]
    ok = gt_mask[index]                                                      # [P, N_atom]
    err = ((candidate - x_pred.double()) ** 2).sum(-1) * ok
    _, group = torch.unique(residue, return_inverse=True)
    n_group = int(group.max()) + 1
    score = err.new_zeros(offsets.shape[0], n_group).index_add_(1, group, err)
    count = err.new_zeros(offsets.shape[0], n_group).index_add_(1, group, ok.double())
    # a row may not trade resolved atoms for unresolved ones
    score = torch.where(count == count[:1], score / count.clamp(min=1.0), torch.inf)
    pick = score.argmin(0)[group]                                           # [N_atom]
    chosen = index.gather(0, pick[None]).squeeze(0)
    return x_gt[chosen], gt_mask[chosen]


def permute_ground_truth(x_pred: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """SI 4.2 for a batch: x_pred [B, N_atom, 3] -> renamed (gt_coords, gt_mask).

    A batch without the permutation targets (PERMUTATION_KEYS) keeps its ground truth.
    """
    real = batch["atom_mask"].bool()
    gt, mask = batch["gt_coords"].float(), batch["gt_mask"].bool() & real
    if not all(key in batch for key in PERMUTATION_KEYS):
        return gt, mask
    out_x, out_mask = [], []
    with torch.no_grad():
        for b in range(x_pred.shape[0]):
            example = {k: v[b] for k, v in batch.items()}
            pred = x_pred[b].detach().float()
            slots = assign_chains(pred, example)
            atom_slot = slots[example["atom_to_token"].long()]               # [N_atom]
            atoms = torch.arange(atom_slot.shape[0], device=atom_slot.device)
            x_b = example["gt_copy_coords"][atom_slot, atoms].float()
            # resolved-ness comes with the copy taken, not with the chain's own truth
            m_b = example["gt_copy_mask"][atom_slot, atoms].bool() & real[b]
            x_b, m_b = choose_atom_symmetry(pred, x_b, m_b, example["atom_perm_offset"],
                                            example["ref_space_uid"])
            out_x.append(x_b.float())
            out_mask.append(m_b & real[b])
    return torch.stack(out_x), torch.stack(out_mask)
