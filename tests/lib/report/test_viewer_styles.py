"""The 3D view's style per chain, on real structures: a continuous backbone is a cartoon,
anything else (scattered atoms, ligands) draws every atom, and the legend reads."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from foldray.report.html import contrast, text_colour
from foldray.report.plots import PLDDT_BANDS
from foldray.report.viewer import chain_styles, sphere_radius, style_script
from tests.data_paths import STRUCTURES


def _structure(name: str) -> gemmi.Structure:
    block = gemmi.cif.read((STRUCTURES / name).as_posix()).sole_block()
    st = gemmi.make_structure_from_block(block)
    st.setup_entities()
    return st


@pytest.mark.parametrize(("name", "cartoon", "atoms"), [
    ("1l2y.cif", ["A"], []),            # protein
    ("1bna.cif", ["A", "B"], []),       # DNA: trace by P / C4'
    ("102m.cif", ["A"], []),            # protein + heme in the same author chain
])
def test_real_backbones_are_cartoons(name, cartoon, atoms):
    st = _structure(name)
    assert chain_styles(st) == {"cartoon": cartoon, "atoms": atoms}
    script = style_script(st)
    assert "cartoon" in script and "viewer.addStyle({hetflag: true}" in script


def test_a_scattered_model_draws_every_atom_with_visible_spheres():
    st = _structure("1l2y.cif")
    rng = np.random.default_rng(0)
    for residue in st[0]["A"]:                       # a random-weights model: atoms anywhere
        for atom in residue:
            atom.pos = gemmi.Position(*rng.normal(0, 500, 3))
    assert chain_styles(st) == {"cartoon": [], "atoms": ["A"]}
    assert sphere_radius(st) > 10 * sphere_radius(_structure("1l2y.cif"))
    assert "sphere" in style_script(st) and "cartoon" not in style_script(st)


def test_legend_text_is_readable_on_every_band():
    for _, _, colour, _ in PLDDT_BANDS:
        assert contrast(colour, text_colour(colour)) >= 4.5, colour
    assert text_colour(PLDDT_BANDS[0][2]) == "#ffffff"    # very high: white on dark blue
