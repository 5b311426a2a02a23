"""How the report's 3D view draws a model: chosen per chain from its geometry.

3Dmol's cartoon follows the trace between consecutive backbone atoms and its sticks follow
bonds it infers from distances; a model whose backbone is broken (random weights, an early
checkpoint, a fragment) or a ligand whose atoms sit too far apart for inferred bonds would
draw nothing at all. So a polymer chain is a cartoon only when its backbone is continuous
(consecutive CA, or P / C4' for nucleic acids, at plausible distances), otherwise every atom
is drawn as a small sphere with sticks where bonds exist; ligands, ions and modified
residues are always ball-and-stick, which shows unbonded atoms too.
"""

from __future__ import annotations

import json

import gemmi
import numpy as np

# Consecutive trace atoms closer than this are linked (CA-CA 3.8 Å; P-P / C4'-C4' <= ~7.5 Å).
MAX_LINK = {"CA": 4.5, "P": 8.0, "C4'": 8.5}
MIN_LINK = 2.0            # closer than this: atoms collapsed onto each other, no usable trace
MIN_CONTINUOUS = 0.9      # fraction of links that must be plausible for a cartoon
STICK_RADIUS = 0.2
SPHERE_RADIUS = 0.35      # Å, ball-and-stick
# Spheres grow with a scattered model (a broken prediction can span 1000s of Å), so every
# atom stays a visible dot after zoomTo: radius >= this fraction of the model's extent.
SPHERE_EXTENT_FRACTION = 0.02


def _trace(residues: list[gemmi.Residue]) -> tuple[str, np.ndarray] | None:
    for name in ("CA", "P", "C4'"):
        found = [r.find_atom(name, "*") for r in residues]
        if all(atom is not None for atom in found):
            return name, np.array([[a.pos.x, a.pos.y, a.pos.z] for a in found])
    return None


def cartoon_allowed(residues: list[gemmi.Residue]) -> bool:
    """Whether 3Dmol can draw this polymer chain as a cartoon: at least two residues and a
    continuous backbone trace."""
    if len(residues) < 2:
        return False
    trace = _trace(residues)
    if trace is None:
        return False
    name, xyz = trace
    links = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
    plausible = (links >= MIN_LINK) & (links <= MAX_LINK[name])
    return bool(plausible.mean() >= MIN_CONTINUOUS)


def chain_styles(structure: gemmi.Structure) -> dict[str, list[str]]:
    """Chain ids of the first model by style: `cartoon` (continuous polymer backbone) and
    `atoms` (every atom drawn: broken backbones, single residues, ligand-only chains); HETATM
    residues of cartoon chains are drawn on top by `style_script`."""
    cartoon: dict[str, bool] = {}
    if len(structure) > 0:
        for chain in structure[0]:      # a name may recur (subchains): any continuous polymer wins
            polymer = [r for r in chain if r.entity_type == gemmi.EntityType.Polymer]
            cartoon[chain.name] = cartoon.get(chain.name, False) or (
                bool(polymer) and cartoon_allowed(polymer))
    return {"cartoon": [c for c, ok in cartoon.items() if ok],
            "atoms": [c for c, ok in cartoon.items() if not ok]}


def sphere_radius(structure: gemmi.Structure) -> float:
    """Å: SPHERE_RADIUS, or more for a model spread wide (SPHERE_EXTENT_FRACTION)."""
    if len(structure) == 0:
        return SPHERE_RADIUS
    xyz = np.array([a.pos.tolist() for chain in structure[0] for r in chain for a in r])
    if len(xyz) < 2:
        return SPHERE_RADIUS
    extent = float(np.percentile(np.linalg.norm(xyz - xyz.mean(0), axis=1), 90))
    return round(max(SPHERE_RADIUS, SPHERE_EXTENT_FRACTION * extent), 2)


def style_script(structure: gemmi.Structure, colour: str = "colour") -> str:
    """JavaScript for a 3Dmol `viewer`: the styles of `chain_styles`, ligands and modified
    residues (HETATM) on top as ball-and-stick; `colour` names a JS colour function."""
    styles = chain_styles(structure)
    radius = sphere_radius(structure)
    ball_and_stick = (f"{{sphere: {{radius: {radius}, colorfunc: {colour}}}, "
                      f"stick: {{radius: {STICK_RADIUS}, colorfunc: {colour}}}}}")
    lines = ["viewer.setStyle({}, {});"]
    if styles["cartoon"]:
        lines.append(f"viewer.setStyle({{chain: {json.dumps(styles['cartoon'])}}}, "
                     f"{{cartoon: {{colorfunc: {colour}}}}});")
    if styles["atoms"]:
        lines.append(f"viewer.setStyle({{chain: {json.dumps(styles['atoms'])}}}, {ball_and_stick});")
    lines.append(f"viewer.addStyle({{hetflag: true}}, {ball_and_stick});")
    return "\n".join(lines)
