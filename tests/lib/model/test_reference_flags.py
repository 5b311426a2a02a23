"""The OpenFold3 switches in foldray's model config, checked on their own (the equivalence
against OpenFold3 itself is tests/lib/io/test_import_weights.py); all default off."""

import dataclasses

import torch

from foldray.model.atom_attention import AtomWindows
from foldray.model.config import ModelConfig, TemplateConfig
from foldray.model.diffusion import DiffusionConditioning
from foldray.model.templates import TemplateEmbedder, same_chain_pair_mask
from foldray.model.triangle import TriangleAttentionEndingNode


def test_flags_default_off():
    tiny, of3 = ModelConfig.tiny(), ModelConfig.tiny_openfold3()
    assert not (tiny.atom.shifted_windows or tiny.atom.separate_key_norm
                or tiny.pairformer.tri_att_end_bias_ik or tiny.diffusion.raw_relpos)
    assert tiny.atom.mask_ref_embedding and tiny.template.padded_slots == 0
    assert of3.atom.shifted_windows and of3.template.padded_slots == 4
    assert ModelConfig.from_dict(of3.to_dict()) == of3


def test_shifted_windows_stay_inside_and_cover_their_queries():
    centred = AtomWindows.build(169, 32, 128)
    shifted = AtomWindows.build(169, 32, 128, shifted=True)
    assert not centred.key_valid.all() and shifted.key_valid.all()
    for b in range(shifted.n_block):
        keys = shifted.key_index[b]
        assert keys.min() >= 0 and keys.max() <= 168
        assert torch.equal(keys, torch.arange(int(keys[0]), int(keys[0]) + 128))
        queries = torch.arange(32 * b, min(32 * b + 32, 169))
        assert torch.isin(queries, keys).all()
    assert torch.equal(centred.key_index[2], shifted.key_index[2])   # interior: unchanged
    short = AtomWindows.build(40, 32, 128, shifted=True)            # window longer than N_atom
    assert short.key_valid.sum(-1).tolist() == [40, 40]


def test_ending_node_bias_ik_matches_a_direct_reading():
    torch.manual_seed(0)
    n, c_z, c, h = 6, 8, 4, 2
    module = TriangleAttentionEndingNode(c_z, c, h, bias_ik=True).eval()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    z = torch.randn(1, n, n, c_z)
    mask = torch.ones(1, n, n, dtype=torch.bool)
    x = module.norm(z)[0]
    q, k, v = (lin(x).unflatten(-1, (h, c)) for lin in (module.q, module.k, module.v))
    b = module.bias(x)                                                  # [i, k, h] = b_ik
    logits = torch.einsum("ijhc,kjhc->ijkh", q, k) / c ** 0.5 + b[:, None, :, :]
    o = torch.einsum("ijkh,kjhc->ijhc", logits.softmax(dim=2), v).flatten(-2)
    expected = module.out(torch.sigmoid(module.gate(x)) * o)
    assert torch.allclose(module(z, mask)[0], expected, atol=1e-5)
    plain = TriangleAttentionEndingNode(c_z, c, h).eval()
    plain.load_state_dict(module.state_dict())
    assert not torch.allclose(plain(z, mask), module(z, mask), atol=1e-3)


def test_padded_template_slots_average_empty_templates_in():
    torch.manual_seed(0)
    config = TemplateConfig(n_block=1, c_t=8, padded_slots=4)
    module = TemplateEmbedder(12, config).eval()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    n = 5
    feats = {"template_restype": torch.randint(0, 32, (1, 2, n)),
             "template_pseudo_beta_mask": torch.ones(1, 2, n),
             "template_backbone_frame_mask": torch.ones(1, 2, n),
             "template_distogram": torch.rand(1, 2, n, n, 39),
             "template_unit_vector": torch.randn(1, 2, n, n, 3),
             "template_mask": torch.tensor([[True, False]]),
             "asym_id": torch.zeros(1, n, dtype=torch.long)}
    z = torch.randn(1, n, n, 12)
    token_mask = torch.ones(1, n, dtype=torch.bool)
    with torch.no_grad():
        z_t = module.embed_z(module.norm_z(z))
        pair_mask = same_chain_pair_mask(feats["asym_id"], token_mask)
        real = module.pairformer(None, z_t + module._embed_template(feats, 0, pair_mask, z.dtype),
                                 token_mask)[1]
        empty = module.pairformer(None, z_t, token_mask)[1]
        expected = module.out(torch.relu((module.norm_v(real) + 3 * module.norm_v(empty)) / 4))
        assert torch.allclose(module(feats, z, token_mask), expected, atol=1e-5)
        none = dict(feats, template_mask=torch.zeros(1, 0, dtype=torch.bool),
                    **{k: v[:, :0] for k, v in feats.items() if k.startswith("template_")
                       and k != "template_mask"})
        assert module(none, z, token_mask).abs().sum() > 0        # empty slots still update z
        off = TemplateEmbedder(12, dataclasses.replace(config, padded_slots=0))
        assert torch.equal(off(none, z, token_mask), torch.zeros_like(z))


def test_raw_relpos_conditioning_concatenates_the_one_hot_features():
    config = ModelConfig.tiny_openfold3()
    module = DiffusionConditioning(config)
    n_rel = 2 * (2 * config.r_max + 2) + 1 + 2 * config.s_max + 2
    assert module.norm_z.weight.shape == (config.c_z + n_rel,)
    assert module.relative_position.linear is None
    assert not any("relative_position" in k for k in module.state_dict())
