"""Algorithm 16: TemplateEmbedder (random template features; real N_templ = 0 inputs)."""

from pathlib import Path

import pytest
import torch

from foldray.features.batch import collate
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_af3_json
from foldray.model.config import ModelConfig
from foldray.model.templates import (
    C_TEMPLATE_PAIR,
    TemplateEmbedder,
    same_chain_pair_mask,
    template_pair_config,
    template_pair_features,
)
from tests.data_paths import INPUTS

CONFIG = ModelConfig.tiny()
C_Z = CONFIG.c_z
N, N_TEMPL = 10, 3
TEMPLATE_KEYS = ("template_restype", "template_pseudo_beta_mask", "template_backbone_frame_mask",
                 "template_distogram", "template_unit_vector", "template_mask")


def make(seed=0):
    torch.manual_seed(seed)
    module = TemplateEmbedder(C_Z, CONFIG.template)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


def template_features(batch=1, n=N, n_templ=N_TEMPL, seed=0):
    """Random Table 5 template features; tokens 0-5 chain 1, the rest chain 2."""
    g = torch.Generator().manual_seed(seed)
    bins = torch.randint(0, 39, (batch, n_templ, n, n), generator=g)
    unit = torch.randn(batch, n_templ, n, n, 3, generator=g)
    return {
        "template_restype": torch.randint(0, 32, (batch, n_templ, n), generator=g, dtype=torch.int64
                                          ).to(torch.int8),
        "template_pseudo_beta_mask": (torch.rand(batch, n_templ, n, generator=g) > 0.2).float(),
        "template_backbone_frame_mask": (torch.rand(batch, n_templ, n, generator=g) > 0.2).float(),
        "template_distogram": torch.nn.functional.one_hot(bins, 39).float(),
        "template_unit_vector": unit / unit.norm(dim=-1, keepdim=True),
        "template_mask": torch.ones(batch, n_templ, dtype=torch.bool),
        "asym_id": (torch.arange(n) >= 6).to(torch.int32).expand(batch, n).clone(),
    }


def pair(batch=1, n=N, seed=1):
    return torch.randn(batch, n, n, C_Z, generator=torch.Generator().manual_seed(seed))


def run(module, features, z, token_mask=None, **kwargs):
    if token_mask is None:
        token_mask = torch.ones(z.shape[:-2], dtype=torch.bool)
    with torch.no_grad():
        return module(features, z, token_mask, **kwargs)


def test_shapes_and_stack_sizes():
    module = make()
    out = run(module, template_features(2), pair(2))
    assert out.shape == (2, N, N, C_Z) and torch.isfinite(out).all()
    assert out.abs().sum() > 0
    assert len(module.pairformer.blocks) == CONFIG.template.n_block
    stack = template_pair_config(CONFIG.template)
    assert stack.c_hidden_mul == CONFIG.template.c_t and stack.transition_n == 2
    assert module.pairformer.blocks[0].attention is None     # pair-only stack


def test_projection_equals_linear_over_the_108_channel_concatenation():
    module = make()
    features = template_features(2)
    token_mask = torch.ones(2, N, dtype=torch.bool)
    mask = same_chain_pair_mask(features["asym_id"], token_mask)
    for t in range(N_TEMPL):
        a = template_pair_features(features, t, token_mask)
        assert a.shape == (2, N, N, C_TEMPLATE_PAIR) == (2, N, N, 108)
        with torch.no_grad():
            fast = module._embed_template(features, t, mask, torch.float32)
            assert torch.allclose(fast, module.embed_a(a), atol=1e-5)
    # the layout: restype_j (channels 40-71) is token j's, restype_i (72-103) token i's
    a = template_pair_features(features, 0, token_mask)
    restype = features["template_restype"][0, 0].long()
    assert torch.equal(a[0, 2, 5, 40:72].argmax(-1), restype[5])
    assert torch.equal(a[0, 2, 5, 72:104].argmax(-1), restype[2])
    # cross-chain pairs (tokens 2 and 8) carry no geometry, only restypes
    assert a[0, 2, 8, :40].abs().sum() == 0 and a[0, 2, 8, 104:].abs().sum() == 0


def test_cross_chain_geometry_is_ignored():
    module = make()
    features, z = template_features(), pair()
    expected = run(module, features, z)
    changed = {**features}
    changed["template_distogram"] = features["template_distogram"].clone()
    changed["template_distogram"][:, :, :6, 6:] = 1.0          # chain 1 x chain 2 pairs
    changed["template_unit_vector"] = features["template_unit_vector"].clone()
    changed["template_unit_vector"][:, :, 6:, :6] = 5.0
    assert torch.allclose(run(module, changed, z), expected, atol=1e-6)


def test_no_templates_give_zeros_cheaply():
    module = make()
    z = pair(2)
    empty = template_features(2, n_templ=0)
    out = run(module, empty, z)
    assert torch.equal(out, torch.zeros_like(z))
    masked = template_features(2)
    masked["template_mask"][:] = False
    assert torch.equal(run(module, masked, z), torch.zeros_like(z))
    # one batch element with templates, one without: the second gets exact zeros
    mixed = template_features(2)
    mixed["template_mask"][1] = False
    out = run(module, mixed, z)
    assert out[0].abs().sum() > 0 and torch.equal(out[1], torch.zeros_like(out[1]))


def test_real_featurized_job_without_templates():
    path = Path(INPUTS / "1l2y.json")
    job = parse_af3_json(path.read_text(), source=str(path))[0]
    features = collate([featurize_job(job).features], token_buckets=(32,))
    assert features["template_mask"].shape == (1, 0)
    z = pair(1, n=32)
    out = run(make(), features, z, features["token_mask"])
    assert torch.equal(out, torch.zeros_like(z)) and not out.isnan().any()


def test_padding_templates_and_template_order_do_not_matter():
    module = make()
    features, z = template_features(), pair()
    expected = run(module, features, z)
    garbage = template_features(n_templ=2, seed=9)
    padded = {key: torch.cat([features[key], garbage[key]], dim=1) if key != "asym_id"
              else features[key] for key in features}
    padded["template_mask"][:, N_TEMPL:] = False
    assert torch.allclose(run(module, padded, z), expected, atol=1e-6)
    order = torch.tensor([2, 0, 1])
    shuffled = {key: value[:, order] if key != "asym_id" else value for key, value in features.items()}
    assert torch.allclose(run(module, shuffled, z), expected, atol=1e-5)


def test_token_padding_invariance():
    module, n_real = make(), 7
    features, z = template_features(), pair()
    token_mask = (torch.arange(N) < n_real)[None]
    padded = run(module, features, z, token_mask)[:, :n_real, :n_real]
    alone_features = {key: value[..., :n_real] if value.dim() == 3 or key == "asym_id"
                      else value[:, :, :n_real, :n_real] if value.dim() == 5 else value
                      for key, value in features.items()}
    alone = run(module, alone_features, z[:, :n_real, :n_real].contiguous())
    assert torch.allclose(padded, alone, atol=1e-5)


def test_chunked_equals_unchunked():
    module = make()
    features, z = template_features(2), pair(2)
    assert torch.allclose(run(module, features, z), run(module, features, z, chunk_size=3),
                          atol=1e-5)


@pytest.mark.parametrize("checkpoint_activations", [False, True])
def test_deterministic_and_gradients_reach_every_parameter(checkpoint_activations):
    module = make()
    features, z = template_features(2), pair(2)
    assert torch.equal(run(module, features, z), run(module, features, z))
    module.train()
    out = module(features, z.requires_grad_(), torch.ones(2, N, dtype=torch.bool),
                 checkpoint_activations=checkpoint_activations)
    out.square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert z.grad.abs().sum() > 0
