"""Progress hooks: the model reports every recycle and diffusion step; bars stay off the
output when not on a terminal."""

from __future__ import annotations

import torch

from foldray.features.batch import collate
from foldray.model.alphafold3 import AlphaFold3
from foldray.model.config import ModelConfig
from foldray.progress import StageBars, interactive
from tests.model_helpers import featurized_inputs


def test_predict_reports_each_recycle_and_diffusion_step():
    features = featurized_inputs("tiny_protein_ligand_smiles.json")["tiny_protein_ligand_smiles.json"]
    batch = collate([features], token_buckets=None, atom_buckets=None)
    torch.manual_seed(0)
    model = AlphaFold3(ModelConfig.tiny()).eval()
    bars = StageBars(enabled=True, prefix="job: ")
    model.predict(batch, n_sample=1, n_cycle=2, n_step=3, progress=bars,
                  generator=torch.Generator().manual_seed(0))
    assert bars.calls == [("recycle", 1, 2), ("recycle", 2, 2), ("diffusion", 1, 3),
                          ("diffusion", 2, 3), ("diffusion", 3, 3)]
    assert bars.bars == {}                      # finished stages close their bars


def test_bars_are_off_when_quiet_or_not_a_terminal(capsys):
    assert interactive(quiet=True) is False
    assert interactive(quiet=False) is False    # pytest captures stderr: not a terminal
    silent = StageBars(enabled=False)
    silent("diffusion", 1, 2)
    assert silent.bars == {} and capsys.readouterr().err == ""
