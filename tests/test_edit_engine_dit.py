"""Inversion Edit Engine on the host's SD3 MMDiT (dit_kv mode): key/value injection in the image tokens of the joint
blocks through the patcher's object patches. A tiny random-weight SD3 (the host's own supported_models.SD3 class)."""
from __future__ import annotations

import math
import sys

import pytest
import torch

import host

CONTEXT, POOLED = 16, 16


def tiny_sd3(seed: int = 0):
    from comfy import model_management, model_patcher, supported_models

    cfg = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
           "adm_in_channels": POOLED, "num_patches": 64, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None,
           "context_embedder_config": {"target": "torch.nn.Linear",
                                       "params": {"in_features": CONTEXT, "out_features": 128}}}
    config = supported_models.SD3(cfg)
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode(False):
        model = config.get_model({}, device=model_management.unet_offload_device())
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # every parameter and the position-embedding buffer (the host builds them uninitialised)
            for p in list(model.diffusion_model.parameters()) + list(model.diffusion_model.buffers()):
                scale = 1.0 / math.sqrt(p[0].numel()) if p.ndim >= 2 and p.shape[0] > 1 else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
        model.eval()
    return model_patcher.ModelPatcher(model, load_device=model_management.get_torch_device(),
                                      offload_device=model_management.unet_offload_device())


def cond(seed: int, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 4, CONTEXT, generator=gen), {"pooled_output": torch.randn(batch, POOLED,
                                                                                          generator=gen)}]]


@pytest.fixture(scope="module")
def setup():
    host.engine()
    pack = host.pack_module()
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    edit = sys.modules[pack.__name__ + ".nodes.edit"]
    model = tiny_sd3()
    src, tgt, neg = cond(1, 2), cond(7, 2), cond(2, 2)
    latent = {"samples": torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(3))}
    with torch.inference_mode():
        schedule = bridge.schedule_from_inputs(model, 6, "simple", None)
        sampler = pack.NODE_CLASS_MAPPINGS["ExactInvert"]().sampler(model, preset="balanced", tolerance=1e-4,
                                                                     budget=3, memory=3)
        inv = bridge.run_inversion(model, src, neg, 1.0, latent, schedule, sampler)
    return dict(bridge=bridge, edit=edit, model=model, src=src, tgt=tgt, neg=neg, inv=inv, latent=latent)


def replay(s, prompt, cfg=2.0, engine=None, correction=0.0, mask=None, pin=None, model=None):
    model = model or s["model"]
    if engine is not None:
        model, _ = s["edit"].build_engine_patch(s["model"], s["inv"], s["src"], "dit_kv", mask=mask, **engine)
    with torch.inference_mode():
        return s["bridge"].run_replay(model, prompt, s["neg"], cfg, s["inv"], source_positive=s["src"],
                                      correction_strength=correction, mask=pin)["samples"]


def test_dit_source_prompt_with_correction_equals_plain_replay(setup):
    plain = replay(setup, setup["src"], correction=1.0)
    edited = replay(setup, setup["src"], correction=1.0, engine=dict(window_start=0.0, window_end=1.0))
    floor = (plain - setup["latent"]["samples"]).abs().max().item()
    assert (edited - plain).abs().max().item() <= 1.5 * floor + 1e-5


def test_dit_empty_window_is_bit_identical_and_batched_equals_cached(setup):
    plain = replay(setup, setup["tgt"])
    assert torch.equal(replay(setup, setup["tgt"], engine=dict(window_start=0.3, window_end=0.3)), plain)
    batched = replay(setup, setup["tgt"], engine=dict(window_start=0.0, window_end=0.6))
    cached = replay(setup, setup["tgt"], engine=dict(window_start=0.0, window_end=0.6, source_branch="cached"))
    assert (batched - cached).abs().max().item() <= 1e-5
    assert (batched - plain).abs().max().item() > 1e-3
    # the object patches belong to the patched clone: the host swaps them out when the plain model is used again
    assert torch.equal(replay(setup, setup["tgt"]), plain)


def test_dit_engines_built_one_after_another_do_not_nest(setup):
    """Each engine wraps the host's own joint block, not the wrapper another engine's MODEL left in place while it
    is loaded (those nested, and every replay went through all earlier engines and kept them alive)."""
    edit, blocks = setup["edit"], []
    for _ in range(3):
        model, _ = edit.build_engine_patch(setup["model"], setup["inv"], setup["src"], "dit_kv",
                                           window_start=0.0, window_end=0.6)
        with torch.inference_mode():
            setup["bridge"].run_replay(model, setup["tgt"], setup["neg"], 2.0, setup["inv"])   # loads its patches
        blocks.append(model.object_patches["diffusion_model.joint_blocks.0"])
    assert all(type(b._original) is not edit._JointBlockWithInjection for b in blocks)
    assert len({id(b._original) for b in blocks}) == 1


def test_dit_masked_edit_keeps_the_outside(setup):
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1.0
    out = replay(setup, setup["tgt"], engine=dict(window_start=0.0, window_end=1.0), mask=mask, pin=mask)
    x0 = setup["latent"]["samples"]
    # (SD3's latent format scales and shifts in and out: equal up to that float round trip)
    assert (out[..., mask == 0] - x0[..., mask == 0]).abs().max().item() <= 1e-5
    assert (out[..., mask == 1] - x0[..., mask == 1]).abs().mean().item() > 1e-3


def test_dit_mode_errors_name_the_input(setup):
    with pytest.raises(ValueError, match="mode"):
        setup["edit"].build_engine_patch(setup["model"], setup["inv"], setup["src"], "pnp")


def test_dit_engine_model_cloned_by_a_later_node_still_edits(setup):
    """A node after the engine clones its MODEL (RescaleCFG, a LoRA loader); the PyPI fork's clone deep-copies
    model_options, so the clone's wrapper was a copy of the engine while the joint blocks (object patches) kept the
    original: every SD3 replay through the clone stopped with "the host ran the model without calling the engine's
    attention patches". The clone shares the engine now, and edits as the engine's MODEL does."""
    model, _ = setup["edit"].build_engine_patch(setup["model"], setup["inv"], setup["src"], "dit_kv",
                                                window_start=0.0, window_end=0.6)
    own = replay(setup, setup["tgt"], model=model)
    assert torch.equal(replay(setup, setup["tgt"], model=model.clone()), own)
    rescaled = host.node_class("RescaleCFG")().patch(model, 0.7)[0]
    assert (replay(setup, setup["tgt"], model=rescaled) - own).abs().max().item() > 1e-4   # RescaleCFG acts


def test_dit_mask_that_changes_nothing_is_warned(setup, caplog):
    """dit_kv gives every joint block the source's keys and values over its window: with a mask, the inside got
    them too and the masked edit equalled the unmasked one bit for bit, unsaid. The warning names the KV-Edit
    setting (layers none: the edit's own keys / values inside the mask), which does hold the outside."""
    from test_editing_host import warnings_of

    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1.0
    caplog.clear()
    unmasked = replay(setup, setup["tgt"], engine=dict(window_start=0.0, window_end=1.0))
    masked = replay(setup, setup["tgt"], engine=dict(window_start=0.0, window_end=1.0), mask=mask)
    assert torch.equal(masked, unmasked)
    assert len(warnings_of(caplog, "the mask changes nothing here")) == 1, warnings_of(caplog)
    caplog.clear()
    kv_edit = replay(setup, setup["tgt"], engine=dict(window_start=0.0, window_end=1.0, layers="none"), mask=mask)
    assert (kv_edit - unmasked).abs().max().item() > 1e-4
    assert warnings_of(caplog, "changes nothing") == [], warnings_of(caplog)
