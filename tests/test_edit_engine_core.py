"""The edit engine's pure-torch pieces (inversion_core/edit): windows, layers, injection math, metrics."""
from __future__ import annotations

import pytest
import torch

import host

edit = None


@pytest.fixture(scope="module", autouse=True)
def core():
    global edit
    import sys

    host.engine()
    edit = sys.modules[host.PACK_DIR_NAME + ".inversion_core.edit"]
    return edit


def sdpa(q, k, v, heads):
    n, l, inner = q.shape
    d = inner // heads
    split = lambda t: t.reshape(n, t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(n, l, inner)


def test_windows_are_fractions_of_the_schedule():
    assert edit.window_steps(4, 0.0, 0.5) == [True, True, False, False]
    masa = edit.window_steps(50, 0.08, 1.0)
    assert masa.index(True) == 4 and all(masa[4:])            # MasaCtrl: from step 4 of 50
    assert not any(edit.window_steps(10, 0.5, 0.5))
    with pytest.raises(ValueError, match="window"):
        edit.window_steps(10, -0.1, 0.5)


def test_layer_selection_and_its_errors():
    layers = [("input", 1, 0), ("middle", 0, 0), ("output", 3, 0), ("output", 4, 0), ("output", 4, 1)]
    assert edit.parse_layers("decoder", layers) == {("output", 3, 0), ("output", 4, 0), ("output", 4, 1)}
    assert edit.parse_layers("output.4-", layers) == {("output", 4, 0), ("output", 4, 1)}
    assert edit.parse_layers("middle, output.4.1", layers) == {("middle", 0, 0), ("output", 4, 1)}
    assert edit.parse_layers("none", layers) == set()
    with pytest.raises(ValueError, match="output.9"):
        edit.parse_layers("output.9", layers)
    with pytest.raises(ValueError, match="cannot read"):
        edit.parse_layers("up_blocks", layers)


def test_flux_layer_names_and_dit_kv_default():
    # Flux's blocks as the engine names them (the host's Flux is upstream only; its run is in check_upstream_drive.py)
    layers = [("double", i, 0) for i in range(3)] + [("single", i, 0) for i in range(4)]
    assert edit.parse_layers("single.2-", layers) == {("single", 2, 0), ("single", 3, 0)}
    assert edit.parse_layers("double", layers) == {("double", i, 0) for i in range(3)}
    with pytest.raises(ValueError, match="joint"):
        edit.parse_layers("joint", layers)
    s = edit.resolve_settings("dit_kv", "Flux", 10, layers, dit=True)
    assert s.self_layers == set(layers) and s.use_k and s.use_v and not s.use_q and sum(s.self_steps) == 5
    sd3 = [("joint", i, 0) for i in range(2)]
    assert edit.resolve_settings("dit_kv", "SD3", 10, sd3, dit=True).self_layers == set(sd3)


def test_find_step_and_presets():
    sched = [14.6, 5.0, 1.0, 0.0]
    assert edit.find_step(5.0000001, sched) == 1 and edit.find_step(3.0, sched) is None
    assert edit.find_step(0.0, sched) is None                     # the last level is never evaluated
    layers = [("output", i, 0) for i in range(12)]
    s = edit.resolve_settings("pnp", "SD15", 50, layers, residual=True)
    assert s.self_layers == {("output", i, 0) for i in range(4, 12)} and s.use_q and s.use_k and not s.use_v
    assert sum(s.self_steps) == 25 and sum(s.residual_steps) == 40 and s.residual_block == 4
    m = edit.resolve_settings("masactrl", "SD15", 50, layers)
    assert m.use_k and m.use_v and not m.use_q and m.self_steps.index(True) == 4
    with pytest.raises(ValueError, match="dit_kv"):
        edit.resolve_settings("pnp", "SD3", 10, [("joint", 0, 0)], dit=True)


def test_injection_math():
    g = torch.Generator().manual_seed(0)
    q, k, v, qs, ks, vs = (torch.randn(2, 16, 8, generator=g) for _ in range(6))
    # strength 0 and no mask: the edit's own tensors; strength 1: the chosen ones are the source's
    assert all(a is b for a, b in zip(edit.inject_self_attention(q, k, v, qs, ks, vs, use_q=True, use_k=True,
                                                                  use_v=True, strength=0.0), (q, k, v)))
    q2, k2, v2 = edit.inject_self_attention(q, k, v, qs, ks, vs, use_q=False, use_k=True, use_v=True)
    assert q2 is q and torch.equal(k2, ks) and torch.equal(v2, vs)
    keep = torch.zeros(2, 16, 1)
    keep[:, :4] = 1
    q3, k3, v3 = edit.inject_self_attention(q, k, v, qs, ks, vs, use_q=False, use_k=False, use_v=False, keep=keep)
    assert torch.equal(k3[:, :4], k[:, :4]) and torch.equal(k3[:, 4:], ks[:, 4:]) and torch.equal(v3[:, 4:], vs[:, 4:])
    # explicit P2P attention equals ordinary attention when nothing is swapped or re-weighted
    ctx_k, ctx_v = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    plain = edit.p2p_cross_attention(q, ctx_k, ctx_v, None, None, heads=2)
    assert torch.allclose(plain, sdpa(q, ctx_k, ctx_v, 2), atol=1e-5)
    # full swap: the source's map with the edit's values
    swapped = edit.p2p_cross_attention(q, ctx_k, ctx_v, qs, ks[:, :5], heads=2, swap_strength=1.0)
    assert torch.allclose(swapped, sdpa(qs, ks[:, :5], ctx_v, 2), atol=1e-5)
    # re-weighting every token by c scales the output by c
    assert torch.allclose(edit.p2p_cross_attention(q, ctx_k, ctx_v, None, None, heads=2, reweight=2.0,
                                                   columns=torch.ones(5, dtype=torch.bool)), 2 * plain, atol=1e-5)


def test_token_padding_is_exact_for_attention():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 4, 8, generator=g), torch.randn(1, 6, 8, generator=g)
    both = edit.concat_tokens([a, b])
    assert both.shape == (2, 12, 8)
    q = torch.randn(1, 3, 8, generator=g)
    assert torch.allclose(sdpa(q, both[:1], both[:1], 2), sdpa(q, a, a, 2), atol=1e-6)
    # the prompts' own lengths are recovered from the padded batch (P2P's token alignment and re-weighted columns)
    assert (edit.token_period(both[:1]), edit.token_period(both[1:]), edit.token_period(both)) == (4, 6, 12)
    assert edit.token_period(torch.cat([a, a[:, :3]], 1)) == 7          # a partial repeat is not a period


def test_metrics():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 16, 8, 8, generator=g)
    assert torch.allclose(edit.structure_distance(f, f), torch.zeros(2))
    assert torch.allclose(edit.structure_distance(f, 3.0 * f), torch.zeros(2), atol=1e-4)   # cosine: scale-free
    assert (edit.structure_distance(f, torch.randn(2, 16, 8, 8, generator=g)) > 1.0).all()
    img = torch.rand(1, 32, 32, 3, generator=g)
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    other = img.clone()
    other[:, 8:24, 8:24] = 0.0                                       # changed only inside the mask
    assert edit.background_psnr(other, img, mask[None]).item() == 100.0
    other[:, 0, 0] += 0.1
    assert 30 < edit.background_psnr(other, img, mask[None]).item() < 100
    assert edit.patch_features(img).shape == (1, 48, 8, 8)
