"""Inversion Edit Engine among other nodes (ControlNet, other attention patches, nodes that clone its MODEL, combined
prompts) and inputs that change nothing: through the host's real samplers, on the tiny SD1 architecture (tests/
architectures.py) and the tiny test UNet. Each test failed before its fix (numbers in the docstrings)."""
from __future__ import annotations

import sys

import pytest
import torch

import host
from host import run_workflow
from test_edit_engine import EXACT
from test_editing_host import warnings_of
from test_nodes_host import invert_and_replay


def _pack(name: str):
    return sys.modules[f"{host.pack_module().__name__}.nodes.{name}"]


@pytest.fixture(scope="module")
def sd1():
    """The tiny SD1 UNet (attention at 16x16 and 8x8 tokens), one image inverted by Exact at T=6, cfg 1."""
    arch = host.testing_module().architectures()
    with torch.inference_mode():
        model = arch.build_model("sd1", 0)
    src, neg, tgt = (arch.make_conditioning("sd1", seeds, 4) for seeds in ("1", "2", "5"))
    bridge = _pack("bridge")
    with torch.inference_mode():
        schedule = bridge.schedule_from_inputs(model, 6, "ddim_uniform", None)
        sampler = host.node_class("ExactInvert")().sampler(model, **EXACT)
        inv = bridge.run_inversion(model, src, neg, 1.0, arch.make_latent("sd1", "3"), schedule, sampler)
    return dict(model=model, inv=inv, src=src, neg=neg, tgt=tgt, arch=arch)


def engine(s, model=None, mode="masactrl", **kw):
    kw = {"window_start": 0.0, "window_end": 1.0, "layers": "all", **kw}
    return host.node_class("InversionEditEngine")().patch(model or s["model"], s["inv"], s["src"], mode, **kw)[0]


def replay(s, model, positive=None, negative=None, cfg=2.0, **kw):
    with torch.inference_mode():
        return host.node_class("InvertedLatentSampler")().sample(
            model, positive or s["tgt"], negative or s["neg"], cfg, s["inv"], **kw)[0]["samples"]


def rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def tiny_controlnet(model):
    """A seeded random ControlNet of the tiny SD1 UNet's layout and a hint image."""
    import architectures

    control, gen = architectures.tiny_controlnet(model)
    return control, torch.rand((1, 128, 128, 3), generator=gen)


def test_a_controlnet_on_the_edit_stays_the_edits_and_the_source_branch_stays_the_inversions(sd1):
    """The host computes ControlNet residuals for the edit's call; the engine passed them to its source branch too,
    and the host's UNet pops them from their lists as it adds them: inside the window the edit ran without its
    ControlNet (its effect on the edit fell from 0.78 to 0.04-0.06 RMS) and the source branch, which must be the
    inversion's own evaluation, ran with it (its queries moved by 17-19 %). Now the ControlNet is the edit's alone.
    A source conditioning carrying one is refused: the source branch cannot run it."""
    control, hint = tiny_controlnet(sd1["model"])
    apply = host.node_class("ControlNetApplyAdvanced")()
    with torch.inference_mode():
        tgt_c, neg_c = apply.apply_controlnet(sd1["tgt"], sd1["neg"], control, hint, 1.0, 0.0, 1.0)
        src_c, _ = apply.apply_controlnet(sd1["src"], sd1["neg"], control, hint, 1.0, 0.0, 1.0)
    plain_effect = rms(replay(sd1, sd1["model"], tgt_c, neg_c, cfg=1.0), replay(sd1, sd1["model"], cfg=1.0))
    assert plain_effect > 0.1, plain_effect
    for mode in ("masactrl", "pnp"):
        edit = engine(sd1, mode=mode)
        effect = rms(replay(sd1, edit, tgt_c, neg_c, cfg=1.0), replay(sd1, edit, cfg=1.0))
        # measured 0.780 / 0.777 of 0.784: the edit keeps its ControlNet (the rest is the injection's own change)
        assert effect > 0.9 * plain_effect, (mode, effect, plain_effect)

    # the source branch's features do not depend on the edit's conditioning: recorded through a replace patch the
    # MODEL already had (the engine calls it for the source rows and the edit rows)
    edit_module, recorded = _pack("edit"), {}
    layer = edit_module.unet_layers(sd1["model"].model.diffusion_model)[-1]

    def recorder(q, k, v, extra):
        import comfy.ldm.modules.attention as attention

        ctx = extra.get(edit_module.KEY)
        if ctx is not None and ctx.phase == "capture":
            recorded.setdefault(ctx.step, []).append(q.clone())
        return attention.optimized_attention(q, k, v, extra["n_heads"])

    user = sd1["model"].clone()
    user.set_model_attn1_replace(recorder, *layer)

    def source_queries(positive, negative):
        recorded.clear()
        replay(sd1, engine(sd1, model=user, source_branch="cached"), positive, negative)
        return {k: torch.cat(v) for k, v in recorded.items()}

    without, with_control = source_queries(sd1["tgt"], sd1["neg"]), source_queries(tgt_c, neg_c)
    assert sorted(without) == sorted(with_control) == list(range(6))
    assert all(torch.equal(without[k], with_control[k]) for k in without)

    with pytest.raises(ValueError, match="source_conditioning: it carries a ControlNet"):
        host.node_class("InversionEditEngine")().patch(sd1["model"], sd1["inv"], src_c, "masactrl")
    area = [[sd1["src"][0][0], dict(sd1["src"][0][1], area=(8, 8, 0, 0), strength=1.0)]]
    with pytest.raises(ValueError, match="source_conditioning: it carries an area"):
        host.node_class("InversionEditEngine")().patch(sd1["model"], sd1["inv"], area, "masactrl")


@pytest.mark.parametrize("patch", ("HyperTile", "TomePatchModel"))
def test_attention_patches_that_regroup_rows_or_tokens_are_an_error(sd1, patch):
    """HyperTile tiles the self-attention's queries into more rows, ToMe merges query tokens: the source's features
    were paired with the wrong rows / tokens of the edit (HyperTile + masactrl, batched: a source tile's queries for
    the whole edit batch, no error; ToMe + pnp: the source's merged queries unmerged with the edit's plan), or the
    run failed inside einops. Now a clear error names the cause."""
    user = (host.node_class("HyperTile")().patch(sd1["model"], 32, 1, 0, False)[0] if patch == "HyperTile"
            else host.node_class("TomePatchModel")().patch(sd1["model"], 0.5)[0])
    assert rms(replay(sd1, user), replay(sd1, sd1["model"])) > 1e-3           # the patch acts at this size
    for mode in ("pnp", "masactrl"):
        for branch in ("batched", "cached"):
            with pytest.raises(RuntimeError, match="regroups the rows or tokens"):
                replay(sd1, engine(sd1, model=user, mode=mode, source_branch=branch))


def test_an_earlier_replace_patch_sees_the_rows_and_chunks_it_would_see_without_the_engine(sd1):
    """Self-Attention Guidance keeps the uncond's attention map from its middle-block replace patch. In a batched
    call the engine handed it source + edit rows with cond_or_uncond doubled, so it kept the source's uncond map
    for the edit's guidance: batched and cached differed (masactrl: by 9 % of the latent's largest value). Now
    the patch is called for the source rows and for the edit rows, each with the call's own cond_or_uncond."""
    user = host.node_class("SelfAttentionGuidance")().patch(sd1["model"], 0.5, 2.0)[0]
    for mode in ("masactrl", "pnp"):
        batched = replay(sd1, engine(sd1, model=user, mode=mode, source_branch="batched"))
        cached = replay(sd1, engine(sd1, model=user, mode=mode, source_branch="cached"))
        err = ((batched - cached).abs().max() / batched.abs().max()).item()
        assert err <= 1e-5, (mode, err)


def test_an_attention_patch_added_after_the_engine_on_its_layer_is_an_error(sd1):
    """ComfyUI keeps one attention replace patch per layer: one set after the engine on a layer the engine patched
    took that layer's injection away without a sign (only the generic 'patches added after the engine' warning, which
    an edit may ignore). Now the replay refuses it and names the layer. A patch on a slot the engine left alone
    (cross-attention under masactrl) is not an error, and the same patch before the engine runs inside it."""
    import comfy.ldm.modules.attention as attention

    def hot_attention(q, k, v, extra):
        return attention.optimized_attention(q * 0.5, k, v, extra["n_heads"])

    layer = _pack("edit").unet_layers(sd1["model"].model.diffusion_model)[-1]
    after = engine(sd1).clone()
    after.set_model_attn1_replace(hot_attention, *layer)
    with pytest.raises(ValueError, match=r"replaced 1 of the engine's own patches \(attn1 output"):
        replay(sd1, after)
    cross = engine(sd1).clone()
    cross.set_model_attn2_replace(hot_attention, *layer)
    replay(sd1, cross)
    before = sd1["model"].clone()
    before.set_model_attn1_replace(hot_attention, *layer)
    replay(sd1, engine(sd1, model=before))


def test_the_engines_model_cloned_by_a_later_node_is_the_same_engine(sd1):
    """The PyPI fork's ModelPatcher.clone deep-copies model_options: every node after the engine (RescaleCFG, a
    LoRA loader) copied the engine with its whole trajectory (SD3: the copy no longer reached the joint blocks, see
    test_edit_engine_dit). A clone now shares the engine."""
    edit = engine(sd1)
    clone = edit.clone()
    checks = _pack("patch_checks")
    assert checks.edit_engine_of(clone) is checks.edit_engine_of(edit)
    assert torch.equal(replay(sd1, clone), replay(sd1, edit))


def test_entries_of_a_combined_prompt_evaluated_in_separate_calls_are_one_run():
    """ConditioningCombine of prompts whose token counts the host does not batch (4 and 20: a ratio over 4) is
    evaluated in two calls of one step, both of chunks [0] at cfg 1: the second was taken for a new run started
    from a foreign latent ("not the inverted latent this engine was built from") at step 1."""
    node = host.node_class("InversionEditEngine")()
    model, cond, neg = host.tiny_model(), host.tiny_conditioning(), host.tiny_conditioning(seed=7)
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    combined = host.tiny_conditioning(seed=42) + host.tiny_conditioning(seed=43, tokens=20)
    edit, = node.patch(model, inv, cond, "pnp", window_start=0.0, window_end=1.0, residual_features=True)
    sampler = host.node_class("InvertedLatentSampler")()
    with torch.inference_mode():
        for cfg in (1.0, 2.0):
            edited = sampler.sample(edit, combined, neg, cfg, inv)[0]["samples"]
            plain = sampler.sample(model, combined, neg, cfg, inv)[0]["samples"]
            assert rms(edited, plain) > 1e-3, cfg                      # the engine edits
        # a run started from another latent is still refused on the first call of its first step
        other = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT) | {
            "latent": {"class_type": "InversionTestLatent", "inputs": {"seed": 99, "batch": 1, "channels": 4,
                                                                       "size": 16}}}, outputs=["invert"])["invert"][0]
        with pytest.raises(ValueError, match="not the inverted latent this engine was built from"):
            sampler.sample(edit, combined, neg, 1.0, other)


@pytest.mark.parametrize("branch", ("batched", "cached"))
def test_strength_zero_is_the_plain_replay_bit_for_bit_and_says_so(caplog, branch):
    """Strength 0 moves nothing towards the source; through the tiny test UNet's batched source branch the result
    differed from the plain replay by float rounding (1.3e-5), so it was neither the replay nor said to be one. Now
    the engine steps aside (bit for bit) and warns. P2P re-weighting does not scale with strength: it stays."""
    model, cond, neg = host.tiny_model(), host.tiny_conditioning(), host.tiny_conditioning(seed=7)
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    tgt, node = host.tiny_conditioning(seed=42), host.node_class("InversionEditEngine")()
    sampler = host.node_class("InvertedLatentSampler")()
    with torch.inference_mode():
        plain = sampler.sample(model, tgt, neg, 2.0, inv)[0]["samples"]
        for mode, extra in (("pnp", {"residual_features": True}), ("masactrl", {}), ("p2p", {})):
            caplog.clear()
            edit, = node.patch(model, inv, cond, mode, strength=0.0, window_start=0.0, window_end=1.0,
                               layers="all", source_branch=branch, **extra)
            assert torch.equal(sampler.sample(edit, tgt, neg, 2.0, inv)[0]["samples"], plain), mode
            assert len(warnings_of(caplog, "strength 0 moves nothing")) == 1, warnings_of(caplog)
        caplog.clear()
        edit, = node.patch(model, inv, cond, "p2p", strength=0.0, window_start=0.0, window_end=1.0, reweight=3.0,
                           tokens="1", source_branch=branch)
        assert rms(sampler.sample(edit, tgt, neg, 2.0, inv)[0]["samples"], plain) > 1e-3
        assert warnings_of(caplog, "strength 0") == []


def test_inputs_that_change_nothing_are_warned(sd1, caplog):
    """Re-weighting inputs on a mode without re-weighting, tokens without a reweight, and a mask where the mode
    already gives every masked layer the source's keys and values (masactrl on every layer at strength 1: the
    masked edit equalled the unmasked one bit for bit) ran as if they acted."""
    said = lambda about: warnings_of(caplog, about)  # noqa: E731
    caplog.clear()
    engine(sd1, mode="pnp", reweight=2.0)
    assert len(said("mode pnp does not use them")) == 1, warnings_of(caplog)
    caplog.clear()
    engine(sd1, mode="p2p", tokens="1")
    assert len(said("nothing is re-weighted")) == 1, warnings_of(caplog)
    caplog.clear()
    engine(sd1, mode="p2p", tokens="1", reweight=2.0)
    engine(sd1, mode="masactrl")
    assert warnings_of(caplog) == []

    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1.0
    unmasked = replay(sd1, engine(sd1))
    caplog.clear()
    moot = replay(sd1, engine(sd1, mask=mask))
    assert torch.equal(moot, unmasked)                                # what the warning says
    assert len(said("the mask changes nothing here")) == 1, warnings_of(caplog)
    caplog.clear()
    for layers in ("none", "decoder"):                               # the mask holds the layers the mode leaves
        held = replay(sd1, engine(sd1, mask=mask, layers=layers))
        assert rms(held, unmasked) > 1e-3, layers
    assert said("the mask changes nothing") == [] and said("changes nothing") == [], warnings_of(caplog)


def test_a_mask_of_another_aspect_ratio_is_warned(sd1, caplog):
    """A MASK is resized onto the latent; one of another aspect ratio (a mask drawn on another image) was stretched
    without a word, its regions landing elsewhere than drawn. A mask of the image itself is not warned, whatever the
    VAE's factor and its rounding of the latent's size."""
    bridge = _pack("bridge")
    said = lambda: warnings_of(caplog, "another aspect ratio")  # noqa: E731
    caplog.clear()
    for mask_hw, latent_hw in (((16, 16), (16, 16)), ((128, 128), (16, 16)), ((750, 1000), (93, 125)),
                               ((768, 1360), (48, 85)), ((7, 9), (7, 9))):
        bridge._mask_for(torch.ones(1, *mask_hw), torch.zeros(1, 4, *latent_hw), "mask")
    assert said() == [], said()
    for mask_hw in ((16, 32), (512, 768)):
        caplog.clear()
        bridge._mask_for(torch.ones(1, *mask_hw), torch.zeros(1, 4, 64, 64), "mask")
        assert len(said()) == 1, (mask_hw, said())
    caplog.clear()
    wide = torch.zeros(1, 16, 32)
    wide[:, :, 8:24] = 1.0
    engine(sd1, mask=wide, layers="decoder")                           # the engine's mask
    replay(sd1, sd1["model"], mask=wide)                                # the sampler's
    assert len(said()) == 2 and all(w.startswith("[comfyui-inversion] mask: the mask is 32x16") for w in said()), said()


def test_a_model_function_wrapper_set_after_the_engine_is_an_error(sd1):
    """ComfyUI keeps one model function wrapper per MODEL: a node after the engine that sets its own replaced the
    engine's, whose attention patches then ran without its context, and the "edit" was the plain replay bit for bit,
    with only the generic "its patches differ ... Intended for an edit? Then ignore this" warning."""
    edit = engine(sd1)
    later = edit.clone()
    later.set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"]))
    with pytest.raises(ValueError, match="replaced the engine's wrapper"):
        replay(sd1, later)
    with pytest.raises(ValueError, match="replaced the engine's wrapper"):     # and a new engine on top of it
        engine(sd1, model=later)
    node = host.node_class
    sigmas = _pack("bridge").read_inverted(sd1["inv"])[1]["sigmas"]
    with torch.inference_mode(), pytest.raises(ValueError, match="replaced the engine's wrapper"):   # SAMPLER path
        guider = node("CFGGuider")().get_guider(later, sd1["tgt"], sd1["neg"], 2.0)[0]
        node("SamplerCustomAdvanced")().sample(node("DisableNoise")().get_noise()[0], guider,
                                               node("InvertedReplaySampler")().get_sampler()[0], sigmas, sd1["inv"])
    before = sd1["model"].clone()                        # the same wrapper before the engine: kept, under the engine
    before.set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"]))
    assert torch.equal(replay(sd1, engine(sd1, model=before)), replay(sd1, edit))
