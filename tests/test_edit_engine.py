"""Inversion Edit Engine through the host's executor: invariances that hold for any weights (tiny random models)."""
from __future__ import annotations

import sys

import pytest
import torch

import host
from host import WorkflowError, run_workflow
from test_nodes_host import invert_and_replay, with_defaults

ENGINE = {"strength": 1.0, "window_start": -1.0, "window_end": -1.0, "layers": "auto", "residual_features": False,
          "reweight": 1.0, "tokens": "", "source_branch": "batched"}
MODES = ("pnp", "masactrl", "p2p")
EXACT = {"preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}


def edit_prompt(batch=2, cfg=2.5, steps=6, correction=0.0, target_seed=None):
    """Invert (DDIM, the tiny model, a batch), then replay twice: plain ("replay") and through the engine
    ("edited"). ``target_seed``: an edit prompt (else the source prompt)."""
    prompt = invert_and_replay(batch=batch, steps=steps, cfg=1.0, method="ExactInvert", extra=EXACT)
    target = ["positive", 0]
    if target_seed is not None:
        prompt["target"] = {"class_type": "InversionTestConditioning",
                            "inputs": {"seed": target_seed, "batch": 1, "tokens": 4, "dim": 16}}
        target = ["target", 0]
    prompt["replay"]["inputs"].update(positive=target, cfg=cfg, correction_strength=correction,
                                      source_positive=["positive", 0])
    prompt["engine"] = {"class_type": "InversionEditEngine", "inputs": {
        "model": ["model", 0], "inverted_latent": ["invert", 0], "source_conditioning": ["positive", 0],
        "mode": "pnp", **ENGINE}}
    prompt["edited"] = {"class_type": "InvertedLatentSampler", "inputs": dict(
        prompt["replay"]["inputs"], model=["engine", 0])}
    return prompt


def run(prompt, **engine):
    prompt["engine"]["inputs"].update(engine)
    out = run_workflow(prompt)
    return out["edited"][0]["samples"], out["replay"][0]["samples"], out


@pytest.mark.parametrize("cfg", (1.0, 2.5))
@pytest.mark.parametrize("mode", MODES)
def test_source_prompt_with_correction_equals_plain_replay(mode, cfg):
    """With the source prompt and source correction 1 the edit branch walks the stored trajectory, so the source
    branch's features are its own: every injection is a no-op up to float32 rounding. The rounding floor is the
    plain replay's own distance to the stored x*_0 (the same walk, unpatched): the engine stays within it."""
    edited, plain, out = run(edit_prompt(correction=1.0, cfg=cfg), mode=mode, residual_features=mode == "pnp",
                             window_start=0.0, window_end=1.0, layers="all", reweight=1.0)
    x0 = out["latent"][0]["samples"]
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(edited, plain) <= 1e-5 * cfg, rms(edited, plain)
    floor = (plain - x0).abs().max().item()
    assert (edited - plain).abs().max().item() <= 1.5 * floor + 1e-6, ((edited - plain).abs().max().item(), floor)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_window_is_bit_identical_to_plain_replay(mode):
    edited, plain, _ = run(edit_prompt(target_seed=42), mode=mode, window_start=0.5, window_end=0.5,
                           residual_features=True)
    assert torch.equal(edited, plain)


def test_a_window_between_two_steps_says_it_does_nothing(caplog):
    """0.3-0.32 of 6 steps is 1.8 <= k < 1.92: no whole step, so the engine is a no-op; it says so (EasyInv's window
    does the same). 0.3-0.45 holds step 2 and does not."""
    from test_editing_host import warnings_of

    edited, plain, _ = run(edit_prompt(target_seed=42), mode="pnp", window_start=0.3, window_end=0.32)
    assert torch.equal(edited, plain)
    assert len(warnings_of(caplog, "holds no whole step")) == 1
    caplog.clear()
    run(edit_prompt(target_seed=42), mode="pnp", window_start=0.3, window_end=0.45)
    assert not warnings_of(caplog, "holds no whole step")


@pytest.mark.parametrize("mode, window", [("pnp", {"window_start": 0.6}), ("p2p", {"window_start": 0.85}),
                                          ("masactrl", {"window_end": 0.05}), ("pnp", {"window_start": 0.7,
                                                                                        "window_end": 0.2})])
def test_a_window_whose_start_passes_its_end_says_it_does_nothing(caplog, mode, window):
    """One end set past the mode's default other end (pnp ends at 0.5) empties the window: the replay is the plain
    one, which the user setting only window_start is unlikely to mean, so it is warned with the default named."""
    from test_editing_host import warnings_of

    edited, plain, _ = run(edit_prompt(target_seed=42), mode=mode, **window)
    assert torch.equal(edited, plain)
    found = warnings_of(caplog, "it holds no step")
    assert len(found) == 1
    assert ("default" in found[0]) == (len(window) == 1), found


@pytest.mark.parametrize("mode, extra", [("pnp", {"residual_features": True}), ("masactrl", {}),
                                         ("p2p", {"reweight": 2.0, "tokens": "1,2"})])
def test_batched_and_cached_source_branch_agree_and_the_edit_moves(mode, extra):
    prompt = edit_prompt(target_seed=42)
    batched, plain, _ = run(prompt, mode=mode, window_start=0.0, window_end=1.0, layers="all",
                            source_branch="batched", **extra)
    cached, _, _ = run(prompt, source_branch="cached")
    # batch 2B against batch B through the same network: float32 rounding only, which scales with the latent's size
    # (max |x| 10-16 here; measured up to 1.9e-6 of it)
    err = ((batched - cached).abs().max() / batched.abs().max()).item()
    assert err <= 1e-5, err
    assert (batched - plain).abs().max().item() > 1e-3       # the injection does something


def test_masked_edit_keeps_the_outside_equal_to_the_reconstruction():
    prompt = edit_prompt(target_seed=42, cfg=1.0)
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1.0
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    prompt["square"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}}
    prompt["composite"] = {"class_type": "MaskComposite", "inputs": {
        "destination": ["mask", 0], "source": ["square", 0], "x": 4, "y": 4, "operation": "add"}}
    prompt["engine"]["inputs"]["mask"] = ["composite", 0]
    prompt["edited"]["inputs"]["mask"] = ["composite", 0]
    prompt["recon"] = {"class_type": "InvertedLatentSampler", "inputs": dict(
        prompt["replay"]["inputs"], positive=["positive", 0])}
    edited, _, out = run(prompt, mode="masactrl", window_start=0.0, window_end=1.0)
    x0 = out["latent"][0]["samples"]
    outside = mask == 0
    # pinned outside: the stored trajectory's last level, i.e. the image latent itself
    assert torch.equal(edited[..., outside], x0[..., outside])
    inside = (edited[..., ~outside] - x0[..., ~outside]).abs().mean().item()
    assert inside > 1e-3
    # the engine's mask alone (no latent pin) acts: the outside keys/values are the source's (whether that keeps
    # the background is a property of trained weights: measured in scripts/benchmark_edits.py)
    prompt["edited"]["inputs"].pop("mask")
    kv_only, _, _ = run(prompt)
    prompt["engine"]["inputs"].pop("mask")
    unmasked, _, _ = run(prompt)
    assert (kv_only - unmasked).abs().max().item() > 1e-3


def test_an_all_zero_engine_mask_warns_what_it_means(caplog):
    """An all-zero MASK on the engine keeps the source's keys / values everywhere; it pins no latent, so the edit
    still changes the image: the warning must not promise the reconstruction (the sampler's mask message does)."""
    from test_editing_host import warnings_of

    prompt = edit_prompt(target_seed=42, cfg=1.0, batch=1)
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 16, "height": 16}}
    prompt["engine"]["inputs"]["mask"] = ["mask", 0]
    caplog.clear()
    edited, plain, _ = run(prompt, mode="masactrl", window_start=0.0, window_end=1.0)
    said = warnings_of(caplog, "mask is 0 everywhere")
    assert said and all("source's keys / values are kept everywhere" in w and "nothing is edited" not in w
                        for w in said), said
    assert (edited - plain).abs().max().item() > 1e-3          # the engine acts: not a reconstruction


def test_the_sampler_path_gives_the_same_edit():
    prompt = edit_prompt(target_seed=42, cfg=1.0, batch=1)
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["engine", 0], "positive": ["target", 0], "negative": ["negative", 0], "cfg": 1.0}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["replay_sampler"] = {"class_type": "InvertedReplaySampler", "inputs": {}}
    prompt["custom"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["replay_sampler", 0], "sigmas": ["invert", 1],
        "latent_image": ["invert", 0]}}
    edited, _, out = run(prompt, mode="pnp", window_start=0.0, window_end=1.0)
    chained = out["custom"][0]["samples"]
    assert (chained - edited).abs().max().item() <= 1e-5


def test_a_sigma_off_the_schedule_is_an_error_naming_the_fix():
    prompt = edit_prompt(target_seed=42, batch=1)
    prompt["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["engine", 0], "positive": ["target", 0], "negative": ["negative", 0], "latent_image": ["latent", 0],
        "seed": 0, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}}
    prompt["engine"]["inputs"].update(window_start=0.0, window_end=1.0)
    with pytest.raises(WorkflowError) as e:
        run_workflow(prompt, outputs=["ks"])
    assert "not on the inverted latent's schedule" in str(e.value) and e.value.node_id == "ks"


def test_a_schedule_that_skips_stored_levels_is_an_error():
    """A stock sampler on a coarser schedule whose levels are all stored ones (simple 3 steps inside simple 6)
    passes the per-sigma check and the start check, yet replays another trajectory: measured 0.65 RMS off the image
    with no word before the engine checked that the steps are consecutive."""
    prompt = edit_prompt(target_seed=42, batch=1)
    prompt["invert"]["inputs"]["scheduler"] = "simple"
    prompt["engine"]["inputs"].update(window_start=0.0, window_end=1.0)
    prompt["coarse"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["model", 0], "scheduler": "simple", "steps": 3, "denoise": 1.0}}
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["engine", 0], "positive": ["target", 0], "negative": ["negative", 0], "cfg": 1.0}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["euler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["custom"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["euler", 0], "sigmas": ["coarse", 0],
        "latent_image": ["invert", 0]}}
    out = run_workflow(prompt, outputs=["invert", "coarse"])
    stored, coarse = out["invert"][1].tolist(), out["coarse"][0].tolist()
    assert all(any(abs(c - s_) <= 1e-6 * max(s_, 1.0) for s_ in stored) for c in coarse), (coarse, stored)
    with pytest.raises(WorkflowError) as e:
        run_workflow(prompt, outputs=["custom"])
    assert "skipping 1 level(s)" in str(e.value) and e.value.node_id == "custom", str(e.value)
    prompt["custom"]["inputs"]["sigmas"] = ["invert", 1]       # the stored schedule itself: consecutive, runs
    run_workflow(prompt, outputs=["custom"])


@pytest.mark.parametrize("method, window", (("ExactInvert", (0.0, 1.0)), ("ExactInvert", (0.5, 0.5)),
                                            ("BDIAInvert", (0.0, 1.0))))
def test_a_start_other_than_the_engines_inverted_latent_is_an_error(method, window):
    """The engine replays its own inversion's trajectory: the Inverted Latent Sampler fed another image's inversion
    (same schedule), or a KSampler starting from noise on that schedule, would be steered by the wrong image. Even
    an empty window (the engine is a no-op) says so: the graph is miswired. A BDIA replay's first model call is one
    step down (its first latent is the stored pair state): checked there."""
    prompt = edit_prompt(target_seed=42, batch=1)
    if method != "ExactInvert":
        prompt["invert"] = with_defaults({"class_type": method, "inputs": {
            k: v for k, v in prompt["invert"]["inputs"].items() if k not in EXACT}})
    prompt["engine"]["inputs"].update(window_start=window[0], window_end=window[1])
    prompt["other_latent"] = {"class_type": "InversionTestLatent",
                              "inputs": {"seed": 99, "batch": 1, "channels": 4, "size": 16}}
    prompt["other"] = dict(prompt["invert"], inputs=dict(prompt["invert"]["inputs"], latent=["other_latent", 0]))
    prompt["edited"]["inputs"]["inverted_latent"] = ["other", 0]
    with pytest.raises(WorkflowError) as e:
        run_workflow(prompt, outputs=["edited"])
    assert "not the inverted latent this engine was built from" in str(e.value) and e.value.node_id == "edited"
    prompt["edited"]["inputs"]["inverted_latent"] = ["invert", 0]      # the same graph, wired right, runs
    assert torch.isfinite(run_workflow(prompt, outputs=["edited"])["edited"][0]["samples"]).all()


@pytest.mark.parametrize("cfg", (1.0, 2.5))
def test_a_replay_of_picked_batch_items_is_an_error_naming_the_route(cfg):
    """The engine on a batch-2 inversion, its Inverted Replay SAMPLER replaying item 1 alone (LatentFromBatch): the
    source branch follows the whole batch and cannot be paired with one item. The error blamed area / regional
    conditioning, which the graph does not have (and at cfg 2.5 said "2 items ... but the inverted latent has 2")."""
    prompt = edit_prompt(target_seed=42, cfg=cfg, batch=2)
    prompt["pick"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["invert", 0], "batch_index": 1,
                                                                  "length": 1}}
    prompt["guider"] = {"class_type": "CFGGuider", "inputs": {
        "model": ["engine", 0], "positive": ["target", 0], "negative": ["negative", 0], "cfg": cfg}}
    prompt["nonoise"] = {"class_type": "DisableNoise", "inputs": {}}
    prompt["replay_sampler"] = {"class_type": "InvertedReplaySampler", "inputs": {}}
    prompt["custom"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["nonoise", 0], "guider": ["guider", 0], "sampler": ["replay_sampler", 0], "sigmas": ["invert", 1],
        "latent_image": ["pick", 0]}}
    prompt["engine"]["inputs"].update(window_start=0.0, window_end=1.0)
    with pytest.raises(WorkflowError) as e:
        run_workflow(prompt, outputs=["custom"])
    msg = str(e.value)
    assert "the sampler runs 1 latent item(s) but the engine's inverted_latent has 2" in msg, msg
    assert "area" not in msg and e.value.node_id == "custom", msg
    prompt["custom"]["inputs"]["latent_image"] = ["invert", 0]          # the whole batch, as the error says: runs
    assert run_workflow(prompt, outputs=["custom"])["custom"][0]["samples"].shape[0] == 2

def test_patches_already_on_the_model_keep_working():
    """Another node's patches on the MODEL (an attention replace, a model function wrapper) run under the engine:
    with an empty window the engine's replay equals the patched model's own replay (they used to be dropped, the
    result silently the unpatched model's). Prompt-to-Prompt, which rewrites cross-attention, refuses an existing
    cross-attention replace instead of overriding it; an engine on an engine is refused too."""
    import comfy.ldm.modules.attention as attention

    node, sampler = host.node_class("InversionEditEngine")(), host.node_class("InvertedLatentSampler")()
    model, cond = host.tiny_model(), host.tiny_conditioning()
    target = host.tiny_conditioning(seed=42)
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]

    def replay(m):
        with torch.inference_mode():
            return sampler.sample(m, target, cond, 2.0, inv)[0]["samples"]

    def hot_attention(q, k, v, extra):                       # attention at temperature 2
        return attention.optimized_attention(q * 0.5, k, v, extra["n_heads"])

    def damped(apply_model, args):
        return apply_model(args["input"], args["timestep"], **args["c"]) * 0.9

    with_attn, with_wrapper = model.clone(), model.clone()
    for layer in node_layers(model):
        with_attn.set_model_attn1_replace(hot_attention, *layer)
    with_wrapper.set_model_unet_function_wrapper(damped)
    plain = replay(model)
    for user in (with_attn, with_wrapper):
        own = replay(user)
        assert (own - plain).abs().max().item() > 1e-3                       # the user's patch acts
        for mode in ("pnp", "masactrl"):
            engine, = node.patch(user, inv, cond, mode, window_start=0.5, window_end=0.5)
            assert (replay(engine) - own).abs().max().item() <= 1e-6, mode   # and still acts under the engine
    with_cross = model.clone()
    for layer in node_layers(model):
        with_cross.set_model_attn2_replace(hot_attention, *layer)
    with pytest.raises(ValueError, match="cross-attention"):
        node.patch(with_cross, inv, cond, "p2p")
    node.patch(with_cross, inv, cond, "pnp")                                # pnp leaves cross-attention alone
    engine, = node.patch(model, inv, cond, "pnp")
    with pytest.raises(ValueError, match="already carries an Inversion Edit Engine"):
        node.patch(engine, inv, cond, "pnp")


@pytest.mark.parametrize("edit_tokens", (5, 8))
@pytest.mark.parametrize("branch", ("batched", "cached"))
def test_p2p_word_swap_needs_prompts_of_one_length_on_either_branch(branch, edit_tokens):
    """The batched branch pads the source and edit prompts to a common length, and the host pads cond and uncond to
    one (an 8-token edit makes the 4-token source and negative 8 long); the word swap must still refuse prompts
    whose tokens do not line up, at any cfg."""
    node, sampler = host.node_class("InversionEditEngine")(), host.node_class("InvertedLatentSampler")()
    model, cond = host.tiny_model(), host.tiny_conditioning()
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    engine, = node.patch(model, inv, cond, "p2p", window_start=0.0, window_end=1.0, source_branch=branch)
    with torch.inference_mode():
        same = sampler.sample(engine, host.tiny_conditioning(seed=42), cond, 2.0, inv)[0]["samples"]
        assert torch.isfinite(same).all()
        for cfg in (1.0, 2.0):
            with pytest.raises(ValueError, match=f"same token length \\(source 4, edit {edit_tokens} tokens\\)"):
                sampler.sample(engine, host.tiny_conditioning(seed=42, tokens=edit_tokens), cond, cfg, inv)


def _p2p_reweight(model, inv, cond, positive, negative, cfg, reweight, **replay):
    node, sampler = host.node_class("InversionEditEngine")(), host.node_class("InvertedLatentSampler")()
    engine, = node.patch(model, inv, cond, "p2p", window_start=0.0, window_end=1.0, reweight=reweight, tokens="1")
    with torch.inference_mode():
        return sampler.sample(engine, positive, negative, cfg, inv, **replay)[0]["samples"]


def test_p2p_reweighting_survives_source_correction():
    """Source correction's offsets are the source prompt's own predictions on the stored trajectory. Computed through
    the engine they carried the re-weighting too, and the correction cancelled it: with the source prompt the result
    was the reconstruction to 1e-7 (RMS), as if re-weighting were off."""
    model, cond = host.tiny_model(), host.tiny_conditioning()
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    neg = host.tiny_conditioning(seed=7)
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()  # noqa: E731
    for cfg in (1.0, 2.0):
        corr = dict(source_positive=cond, correction_strength=1.0)
        plain = _p2p_reweight(model, inv, cond, cond, neg, cfg, 1.0, **corr)      # re-weighting off: a no-op
        weighted = _p2p_reweight(model, inv, cond, cond, neg, cfg, 3.0, **corr)
        uncorrected = rms(_p2p_reweight(model, inv, cond, cond, neg, cfg, 3.0),
                          _p2p_reweight(model, inv, cond, cond, neg, cfg, 1.0))
        assert uncorrected > 1e-3, uncorrected
        # the correction moves the walk back onto the stored trajectory, it does not undo the re-weighting
        assert rms(weighted, plain) > 0.5 * uncorrected, (rms(weighted, plain), uncorrected)


def test_p2p_reweighting_does_not_depend_on_the_negatives_length():
    """A negative twice the edit prompt's length makes the host repeat the edit prompt; the re-weighted columns were
    found with the padded length as the period, so only the first copy of the token was scaled (45 % weaker)."""
    model, cond = host.tiny_model(), host.tiny_conditioning()
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    edit = host.tiny_conditioning(seed=42)
    neg = host.tiny_conditioning(seed=7)
    neg2 = [[torch.cat([neg[0][0], neg[0][0]], dim=1), dict(neg[0][1])]]     # ConditioningConcat(neg, neg)
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()  # noqa: E731
    off = _p2p_reweight(model, inv, cond, edit, neg, 2.0, 1.0)
    short = _p2p_reweight(model, inv, cond, edit, neg, 2.0, 3.0)
    long = _p2p_reweight(model, inv, cond, edit, neg2, 2.0, 3.0)
    assert rms(short, off) > 1e-3, rms(short, off)
    assert rms(short, long) < 1e-3 * rms(short, off), (rms(short, long), rms(short, off))


def test_an_attention_override_reaches_the_engines_attention(monkeypatch):
    """Upstream ComfyUI's attention functions take transformer_options, whose optimized_attention_override another
    node may set (an attention kernel): the engine's own attention calls must pass it on. Simulated here with a host
    attention function of that signature (the PyPI fork's take none: then nothing is passed)."""
    import comfy.ldm.modules.attention as attention

    node, sampler = host.node_class("InversionEditEngine")(), host.node_class("InvertedLatentSampler")()
    model, cond = host.tiny_model(), host.tiny_conditioning()
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    original, seen = attention.optimized_attention, []

    def upstream_like(q, k, v, heads, mask=None, attn_precision=None, transformer_options=None):
        override = (transformer_options or {}).get("optimized_attention_override")
        if override is not None:
            return override(original, q, k, v, heads, attn_precision=attn_precision)
        return original(q, k, v, heads, attn_precision=attn_precision)

    def kernel(func, *args, **kwargs):
        seen.append(1)
        return func(*args, **kwargs)

    monkeypatch.setattr(attention, "optimized_attention", upstream_like)
    user = model.clone()
    user.model_options["transformer_options"]["optimized_attention_override"] = kernel
    engine, = node.patch(user, inv, cond, "masactrl", window_start=0.0, window_end=1.0)
    with torch.inference_mode():
        sampler.sample(engine, host.tiny_conditioning(seed=42), cond, 1.0, inv)
    assert len(seen) >= 4 * len(node_layers(model)), len(seen)


def test_blocks_whose_attn1_reads_the_text_are_left_alone():
    """A transformer block built with disable_self_attn (SD x4 upscaler) has a cross-attention in attn1: the engine's
    self-attention injection must not touch it."""
    from comfy.ldm.modules.attention import SpatialTransformer

    def blocks(disable):
        return torch.nn.Sequential(SpatialTransformer(32, 2, 16, depth=1, context_dim=8, disable_self_attn=disable))

    unet = torch.nn.Module()
    unet.input_blocks = torch.nn.ModuleList([blocks(True), blocks(False)])
    edit = sys.modules[host.pack_module().__name__ + ".nodes.edit"]
    assert edit.unet_layers(unet) == [("input", 1, 0)]


def node_layers(model) -> list:
    edit = sys.modules[host.pack_module().__name__ + ".nodes.edit"]
    return edit.unet_layers(model.model.diffusion_model)


def test_bad_inputs_name_themselves():
    node = host.node_class("InversionEditEngine")()
    model = host.tiny_model()
    cond = host.tiny_conditioning()
    with pytest.raises(ValueError, match="inverted_latent"):
        node.patch(model, {"samples": torch.zeros(1, 4, 16, 16)}, cond, "pnp")
    out = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])
    inv = out["invert"][0]
    with pytest.raises(ValueError, match="layers"):
        node.patch(model, inv, cond, "pnp", layers="output.99")
    with pytest.raises(ValueError, match="mode"):
        node.patch(model, inv, cond, "dit_kv")
    patched, = node.patch(model, inv, cond, "masactrl", layers="decoder")
    assert patched is not model and "model_function_wrapper" not in model.model_options
    tips = host.node_class("InversionEditEngine").INPUT_TYPES()
    for group in tips.values():
        for name, spec in group.items():
            assert spec[1].get("tooltip"), name


def test_patches_added_after_the_engine_are_warned(caplog):
    """A MODEL carrying the engine skipped the patch comparison (the engine compares the model it patched with the
    inversion's), so a RescaleCFG / LoRA / FreeU put on after the engine changed the replay without a word."""
    from test_editing_host import warnings_of

    prompt = edit_prompt(cfg=2.5)
    prompt["rescaled"] = {"class_type": "RescaleCFG", "inputs": {"model": ["engine", 0], "multiplier": 0.7}}
    caplog.clear()
    run_workflow(prompt)
    assert warnings_of(caplog, "patches were added after the Inversion Edit Engine") == [], warnings_of(caplog)
    prompt["edited"]["inputs"]["model"] = ["rescaled", 0]
    caplog.clear()
    run_workflow(prompt)
    said = warnings_of(caplog, "patches were added after the Inversion Edit Engine")
    assert len(said) == 1 and "(cfg functions" in said[0], warnings_of(caplog)
    assert warnings_of(caplog, "its patches differ") == [], warnings_of(caplog)


def test_cond_and_uncond_in_separate_calls_of_one_step_are_one_run(monkeypatch):
    """The host evaluates cond and uncond in two calls of one step when they cannot be batched (token counts) or do
    not fit in memory together. The second call of a step used to be taken for a new run started from a foreign
    latent (ValueError "not the inverted latent this engine was built from")."""
    batched, plain, _ = run(edit_prompt(target_seed=42), mode="pnp", window_start=0.0, window_end=1.0,
                            residual_features=True)
    import comfy.model_base            # a GPU without room for both: the host runs them one by one
    monkeypatch.setattr(comfy.model_base.BaseModel, "memory_required",
                        lambda self, input_shape, **kw: 0 if input_shape[0] <= 2 else 1e15)
    split, _, _ = run(edit_prompt(target_seed=42), mode="pnp", window_start=0.0, window_end=1.0,
                      residual_features=True)
    assert (split - batched).abs().max().item() <= 1e-4 * batched.abs().max().item()
    assert (batched - plain).pow(2).mean().sqrt().item() > 1e-3           # the engine did edit
    monkeypatch.undo()
    prompt = edit_prompt(target_seed=42)
    prompt["negative"]["inputs"]["tokens"] = 5                          # 4 vs 5 tokens: never one batch
    edited, plain, _ = run(prompt, mode="pnp", window_start=0.0, window_end=1.0, residual_features=True)
    assert (edited - plain).pow(2).mean().sqrt().item() > 1e-3
