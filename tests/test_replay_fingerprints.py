"""Replays that cannot reconstruct because their model or guidance is not the inversion's, and say so.

The model signature recorded at inversion named patch keys and strengths only, so on the host's real architectures
(tests/architectures.py, tiny random weights, Exact Invert at T=5) these replayed without a word (audit, measured):
a second LoRA on the same keys at the same strength (SD3: 72 dB -> 30 dB), another checkpoint of the same
architecture (SD1.5: 34 -> 16 dB, SD3: 74 -> 20 dB), the inversion's prompt at another cfg (SD3 inverted at cfg 4,
replayed at cfg 1: 72 -> 32 dB), and a source prompt for source correction or the edit engine that is not the
inversion's (SDXL's same text with other size values: 119 -> 26 dB with correction at cfg 5). Each is a warning, not an
error (an edit may mean it), and the normal flows (the same model twice, after the host unloaded it, with the same
LoRA; an edit prompt at any cfg) stay silent.
"""
from __future__ import annotations

import sys

import pytest
import torch

import host
from inversion_core.fingerprint import SAMPLE, TensorPrint, fingerprint, matches
from test_architectures import defaults, host_scheduler, scheduler
from test_editing_host import warnings_of

STEPS = 5
SOURCE, NEGATIVE, EDIT, LATENT = "1", "2", "5", "3"
OTHER_CHECKPOINT = "the model's weights differ from the model this latent was inverted with (another checkpoint?)"
OTHER_PATCH_VALUES = "the contents of its weight patches"
ANY_MODEL_WARNING = ("its patches differ", "the model's weights differ")


def bridge():
    return sys.modules[f"{host.PACK_DIR_NAME}.nodes.bridge"]


def patch_checks():
    return sys.modules[f"{host.PACK_DIR_NAME}.nodes.patch_checks"]


def guidance_checks():
    return sys.modules[f"{host.PACK_DIR_NAME}.nodes.guidance"]


def arch():
    return host.testing_module().architectures()


def build(family: str, seed: int = 0):
    with torch.inference_mode():      # as the host's loaders leave weights: inference tensors
        return arch().build_model(family, seed)


def cond(family: str, seeds: str = SOURCE, **size):
    return arch().make_conditioning(family, seeds, 4, **size)


def invert(model, family: str, positive=None, cfg: float = 1.0, negative=None) -> dict:
    """Exact Invert at its defaults, T=5, on the family's scheduler (tests/test_architectures.py)."""
    params = {k: v for k, v in defaults("ExactInvert").items() if k not in ("steps", "scheduler", "cfg", "denoise")}
    with torch.inference_mode():
        return host.node_class("ExactInvert")().invert(
            model, positive or cond(family), negative or cond(family, NEGATIVE), arch().make_latent(family, LATENT, 16),
            STEPS, scheduler(family), cfg, 1.0, None, **params)[0]


def replay(model, family: str, inverted: dict, positive=None, cfg: float = 1.0, negative=None,
           **inputs) -> torch.Tensor:
    with torch.inference_mode():
        return host.node_class("InvertedLatentSampler")().sample(
            model, positive or cond(family), negative or cond(family, NEGATIVE), cfg, inverted, **inputs)[0]["samples"]


def error(out: torch.Tensor, family: str) -> float:
    """RMS distance of a replay to the source latent."""
    return (out - arch().make_latent(family, LATENT, 16)["samples"]).pow(2).mean().sqrt().item()


def model_warnings(caplog) -> list:
    return [w for w in warnings_of(caplog) if any(what in w for what in ANY_MODEL_WARNING)]


def with_weight_diffs(base, seed: int, keys=None, strength: float = 1.0):
    """A clone of ``base`` carrying seeded random weight diffs (what a LoRA file amounts to) on ``keys`` (default: every
    parameter of the diffusion model), 30% of each weight's spread."""
    sd = base.model.diffusion_model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    m = base.clone()
    m.add_patches({"diffusion_model." + k: (0.3 * sd[k].float().std().nan_to_num() * torch.randn(sd[k].shape,
                                                                                                   generator=gen),)
                   for k in (keys or list(sd))}, strength)
    return m


# ------------------------------------------------------------------------------------------- the fingerprint itself
def test_a_fingerprint_reads_a_sample_and_tells_contents_apart_but_not_storage():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(300, 700, generator=gen)
    # casts (float8: the weights of fp8 checkpoints, which torch.take cannot read) and a non-contiguous layout
    same = [t.clone(), t.half(), t.bfloat16(), t.to(torch.float8_e4m3fn), t.to(torch.float8_e5m2),
            t.t().contiguous().t()]
    assert all(matches(fingerprint(t), fingerprint(s)) for s in same)
    assert not matches(fingerprint(t), fingerprint(t * 1.001))                    # a light fine-tune of every value
    assert not matches(fingerprint(t), fingerprint(torch.randn(300, 700, generator=gen)))   # another LoRA
    assert not matches(fingerprint(t), fingerprint(t.reshape(700, 300)))
    print_ = fingerprint(t)
    assert isinstance(print_, TensorPrint) and print_.shape == (300, 700) and print_.dtype == "torch.float32"
    # it reads a strided sample (cheap on any weight), so a change between the sampled values is not seen
    step = -(-t.numel() // SAMPLE)
    between = t.clone().view(-1)
    between[step // 2] += 1.0
    assert matches(fingerprint(t), fingerprint(between.view(300, 700)))
    # structures: plain values compared as they are, tensors by their prints
    patch = {"k": [(1.0, (t,), 1.0)]}
    assert matches(fingerprint(patch), fingerprint({"k": [(1.0, (t.clone(),), 1.0)]}))
    assert not matches(fingerprint(patch), fingerprint({"k": [(0.5, (t,), 1.0)]}))
    assert fingerprint(torch.empty(2, 3, device="meta")) is None      # unreadable: the caller skips the check


# --------------------------------------------------------------------------------------------- weight patch contents
@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_another_lora_on_the_same_keys_at_the_same_strength_is_warned(family, caplog):
    import comfy.model_management

    base = build(family)
    lora_a, lora_b = with_weight_diffs(base, 10), with_weight_diffs(base, 11)
    inverted = invert(lora_a, family)
    # the LoRA is merged into the loaded weights (the host's full load), so the base weights must come from the backup
    assert set(lora_a.backup) == set(lora_a.patches)
    caplog.clear()
    same = replay(lora_a, family, inverted)
    comfy.model_management.unload_all_models()     # the weights are the checkpoint's again
    assert not lora_a.backup
    replay(lora_a, family, inverted)
    assert model_warnings(caplog) == []
    caplog.clear()
    other = replay(lora_b, family, inverted)
    said = model_warnings(caplog)
    assert len(said) == 1 and OTHER_PATCH_VALUES in said[0], said
    assert error(other, family) > 2 * error(same, family), (error(other, family), error(same, family))


def test_a_merge_with_another_model_at_the_same_ratio_is_warned(caplog):
    """Through the host's ModelMergeSimple (its patches are the other model's weights): keys and strengths equal."""
    prompt = {"base": {"class_type": "InversionTestArchModel", "inputs": {"family": "sd1", "seed": 0}}}
    for seed in (1, 2):
        prompt[f"other{seed}"] = {"class_type": "InversionTestArchModel", "inputs": {"family": "sd1", "seed": seed}}
        prompt[f"merge{seed}"] = {"class_type": "ModelMergeSimple", "inputs": {
            "model1": ["base", 0], "model2": [f"other{seed}", 0], "ratio": 0.5}}
    prompt.update({
        "positive": {"class_type": "InversionTestArchConditioning",
                     "inputs": {"family": "sd1", "seeds": SOURCE, "tokens": 4}},
        "negative": {"class_type": "InversionTestArchConditioning",
                     "inputs": {"family": "sd1", "seeds": NEGATIVE, "tokens": 4}},
        "latent": {"class_type": "InversionTestArchLatent", "inputs": {"family": "sd1", "seeds": LATENT, "size": 16}},
        "invert": {"class_type": "ExactInvert", "inputs": {
            **defaults("ExactInvert", steps=STEPS, scheduler=scheduler("sd1")), "model": ["merge1", 0],
            "positive": ["positive", 0], "negative": ["negative", 0], "latent": ["latent", 0]}}})
    for model, warned in (("merge1", False), ("merge2", True)):
        prompt["replay"] = {"class_type": "InvertedLatentSampler", "inputs": {
            **defaults("InvertedLatentSampler"), "model": [model, 0], "positive": ["positive", 0],
            "negative": ["negative", 0], "inverted_latent": ["invert", 0]}}
        caplog.clear()
        host.run_workflow(prompt)
        said = model_warnings(caplog)
        assert (len(said) == 1 and OTHER_PATCH_VALUES in said[0]) if warned else said == [], (model, said)


# ------------------------------------------------------------------------------------------------- the base weights
@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_another_checkpoint_is_warned_and_the_same_one_never_is(family, caplog):
    import comfy.model_management

    a, b = build(family, 0), build(family, 1)
    inverted = invert(a, family)
    caplog.clear()
    same = replay(a, family, inverted)
    comfy.model_management.unload_all_models()
    again = replay(a, family, inverted)
    assert model_warnings(caplog) == []
    assert torch.equal(same, again)
    twin = build(family, 0)          # the same checkpoint loaded again (another loader node): the same weights
    replay(twin, family, inverted)
    assert model_warnings(caplog) == []
    other = replay(b, family, inverted)
    said = model_warnings(caplog)
    assert len(said) == 1 and said[0].startswith(f"[comfyui-inversion] model: {OTHER_CHECKPOINT}"), said
    assert error(other, family) > 2 * error(same, family), (error(other, family), error(same, family))
    # the edit engine checks the model it patches
    caplog.clear()
    with torch.inference_mode():
        host.node_class("InversionEditEngine")().patch(b, inverted, cond(family), *(
            ("dit_kv",) if family == "sd3" else ("pnp", 1.0, -1.0, -1.0, "decoder")))
    said = model_warnings(caplog)
    assert len(said) == 1 and said[0].startswith(f"[comfyui-inversion] model: {OTHER_CHECKPOINT}"), said


def test_the_base_weights_are_the_checkpoints_in_every_load_state():
    """A full load merges a LoRA into the weights in place; lowvram applies it on the fly; unloaded, the weights are
    the checkpoint's. The fingerprint reads the patcher's backup of what it overwrote, so it is the checkpoint's in
    every state, for the LoRA's clone as for the bare model."""
    import comfy.model_management

    base = build("sd1")
    lora = with_weight_diffs(base, 10)
    unloaded = patch_checks().base_weights(lora)
    assert unloaded is not None and matches(unloaded, patch_checks().base_weights(base))
    comfy.model_management.load_models_gpu([lora])
    try:
        net = lora.model.diffusion_model
        picked = [name for name, _ in patch_checks().base_weights(lora)]
        assert all("diffusion_model." + name in lora.backup for name in picked)    # merged in place, originals saved
        current = fingerprint([(name, net.get_parameter(name)) for name in picked])
        assert not matches(current, unloaded)
        assert matches(patch_checks().base_weights(lora), unloaded) and matches(patch_checks().base_weights(base), unloaded)
    finally:
        comfy.model_management.unload_all_models()
    assert not lora.backup
    lora.patch_model_lowvram(device_to=lora.load_device, lowvram_model_memory=0)     # patches applied on the fly
    try:
        assert any(getattr(m, "weight_function", None) is not None for m in lora.model.modules())
        assert matches(patch_checks().base_weights(lora), unloaded)
    finally:
        lora.unpatch_model(lora.offload_device)
    assert not matches(patch_checks().base_weights(build("sd1", 1)), unloaded)


def test_the_edit_engines_object_patches_do_not_change_the_base_weights(caplog):
    """SD3's engine puts its own module in place of each joint block while its MODEL is loaded: the parameters keep
    their names, so replays and engines built while it is loaded see the same base weights."""
    family = "sd3"
    model = build(family)
    inverted = invert(model, family)
    caplog.clear()
    with torch.inference_mode():
        engine = host.node_class("InversionEditEngine")().patch(model, inverted, cond(family), "dit_kv")[0]
    replay(engine, family, inverted, positive=cond(family, EDIT))
    # the engine's MODEL is still loaded when the next replay checks its model
    assert type(model.model.diffusion_model.joint_blocks[0]).__name__ == "_JointBlockWithInjection"
    replay(model, family, inverted)
    with torch.inference_mode():
        host.node_class("InversionEditEngine")().patch(model, inverted, cond(family), "dit_kv")
    assert model_warnings(caplog) == []


# ----------------------------------------------------------------------------------------------- prompt and cfg
def test_the_inversion_prompt_at_another_cfg_is_warned_and_edits_are_not(caplog):
    family = "sd3"
    model = build(family)
    inverted = invert(model, family, cfg=4.0)
    said = lambda: warnings_of(caplog, "cfg: the positive conditioning is the one this latent was inverted with")
    caplog.clear()
    back = replay(model, family, inverted, cfg=4.0)
    replay(model, family, inverted, positive=cond(family, EDIT), cfg=1.0)       # edits, at any cfg
    replay(model, family, inverted, positive=cond(family, EDIT), cfg=7.0)
    corrected = replay(model, family, inverted, cfg=1.0, correction_strength=1.0, source_positive=cond(family))
    assert said() == []
    assert error(corrected, family) < 2 * error(back, family)    # full source correction reconstructs at any cfg
    caplog.clear()
    off = replay(model, family, inverted, cfg=1.0)
    assert len(said()) == 1 and "but cfg is 1 where the inversion ran at cfg 4" in said()[0], warnings_of(caplog)
    assert error(off, family) > 10 * error(back, family)
    caplog.clear()                  # half the correction does not make it a reconstruction
    replay(model, family, inverted, cfg=1.0, correction_strength=0.5, source_positive=cond(family))
    assert len(said()) == 1, warnings_of(caplog)


def test_the_inversion_prompt_and_cfg_with_another_negative_is_warned(caplog):
    """At cfg != 1 the negative steers every step; a replay with the inversion's positive and cfg but another negative
    was never compared (reference model, cfg 3: 20.5 dB against 76.5, silent). At cfg 1 the host never evaluates the
    negative: not warned there."""
    family = "sd3"
    model = build(family)
    said = lambda: warnings_of(caplog, "negative: the positive conditioning and cfg")   # noqa: E731
    inverted = invert(model, family, cfg=4.0)
    caplog.clear()
    back = replay(model, family, inverted, cfg=4.0)
    assert said() == []
    other = replay(model, family, inverted, cfg=4.0, negative=cond(family, EDIT))
    assert len(said()) == 1 and "cfg 4 are the ones" in said()[0], warnings_of(caplog)
    assert error(other, family) > 10 * error(back, family)
    caplog.clear()
    replay(model, family, inverted, positive=cond(family, EDIT), cfg=4.0, negative=cond(family, EDIT + "1"))
    unguided = invert(model, family, cfg=1.0)
    replay(model, family, unguided, cfg=1.0, negative=cond(family, EDIT))
    assert said() == [], warnings_of(caplog)          # an edit of the positive; cfg 1 ignores the negative


def test_cfg_is_not_judged_where_it_changes_nothing_or_an_engine_edits(caplog):
    """Negative = positive makes every cfg the conditional prediction (negative-prompt-inversion style), at the
    replay or at the inversion; a MODEL carrying the edit engine edits with the same prompt (false alarms before)."""
    family = "sd3"
    model = build(family)
    said = lambda: warnings_of(caplog, "cfg: the positive conditioning is the one this latent was inverted with")
    inverted = invert(model, family, cfg=4.0)
    caplog.clear()
    one = replay(model, family, inverted, cfg=1.0, negative=cond(family))
    seven = replay(model, family, inverted, cfg=7.0, negative=cond(family))
    assert torch.allclose(one, seven, atol=1e-4) and said() == []
    engine = host.node_class("InversionEditEngine")()
    with torch.inference_mode():
        edited_model = engine.patch(model, inverted, cond(family), "dit_kv")[0]
    replay(edited_model, family, inverted, cfg=1.0)
    assert said() == []
    same = invert(model, family, cfg=4.0, negative=cond(family))
    replay(model, family, same, cfg=1.0)
    assert said() == []
    replay(model, family, inverted, cfg=1.0)                                # the real mismatch is still told
    assert len(said()) == 1


def test_the_replay_sampler_warns_the_inversion_prompt_at_another_cfg(caplog):
    """The SAMPLER twins: the Inverted Replay SAMPLER finds the inversion by its noise and compares its guider."""
    node = host.node_class
    family = "sd3"
    model, positive, negative = build(family), cond(family), cond(family, NEGATIVE)
    with torch.inference_mode():
        sigmas = node("BasicScheduler")().get_sigmas(model, host_scheduler(family), STEPS, 1.0)[0]
        flipped = node("FlipSigmas")().get_sigmas(sigmas)[0]
        guider = node("CFGGuider")().get_guider(model, positive, negative, 3.0)[0]
        noise = node("DisableNoise")().get_noise()[0]
        inverter = node("DDIMInvertSampler")().get_sampler(**defaults("DDIMInvertSampler"))[0]
        inverted = node("SamplerCustomAdvanced")().sample(noise, guider, inverter, flipped,
                                                          arch().make_latent(family, LATENT, 16))[0]
        said = lambda: warnings_of(caplog, "Inverted Replay SAMPLER: cfg: the positive conditioning is the one")
        for cfg, warned in ((3.0, False), (1.0, True)):
            caplog.clear()
            replayer = node("CFGGuider")().get_guider(model, positive, negative, cfg)[0]
            node("SamplerCustomAdvanced")().sample(noise, replayer, node("InvertedReplaySampler")().get_sampler()[0],
                                                   sigmas, inverted)
            assert len(said()) == int(warned), warnings_of(caplog)
        caplog.clear()               # another checkpoint, through the same path
        other = node("CFGGuider")().get_guider(build(family, 1), positive, negative, 3.0)[0]
        node("SamplerCustomAdvanced")().sample(noise, other, node("InvertedReplaySampler")().get_sampler()[0],
                                               sigmas, inverted)
        assert len(warnings_of(caplog, OTHER_CHECKPOINT)) == 1, warnings_of(caplog)


def test_a_source_prompt_that_is_not_the_inversions_is_warned(caplog):
    """SDXL: the same text with other size values (CLIPTextEncodeSDXL's 1024 defaults against the image's size) is
    another conditioning; source correction with the inversion's prompt as positive is told its source is not the
    inversion's, and so is the edit engine's source_conditioning (its source branch, pinned to the stored trajectory,
    then runs another prompt: tests/test_edit_engine_source_prompt.py, where a description after an empty-prompt
    inversion stays silent). The other conditioning as positive and source for correction is meant (exact at any
    prompt) and stays silent."""
    family = "sdxl"
    model = build(family)
    positive, other_size = cond(family, width=1024, height=1024), cond(family, width=832, height=1216)
    inverted = invert(model, family, positive=positive)
    said = lambda name: warnings_of(caplog, f"{name}: it differs from the positive conditioning this latent was "
                                            "inverted with")
    caplog.clear()
    exact = replay(model, family, inverted, positive=positive, cfg=5.0, correction_strength=1.0,
                   source_positive=positive)
    replay(model, family, inverted, positive=other_size, cfg=1.0)          # an edit of the size values: fine
    with torch.inference_mode():
        host.node_class("InversionEditEngine")().patch(model, inverted, positive, "pnp")
    assert warnings_of(caplog) == []
    wrong = replay(model, family, inverted, positive=positive, cfg=5.0, correction_strength=1.0,
                   source_positive=other_size)
    assert len(said("source_positive")) == 1, warnings_of(caplog)
    assert error(wrong, family) > 10 * error(exact, family)
    caplog.clear()
    both = replay(model, family, inverted, positive=other_size, cfg=5.0, correction_strength=1.0,
                  source_positive=other_size)
    assert warnings_of(caplog) == []
    assert error(both, family) < 2 * error(exact, family)          # the offsets reconstruct through any source
    with torch.inference_mode():
        host.node_class("InversionEditEngine")().patch(model, inverted, other_size, "pnp")
    assert len(said("Inversion Edit Engine: source_conditioning")) == 1, warnings_of(caplog)
    assert len(warnings_of(caplog)) == 1, warnings_of(caplog)


def test_a_controlnet_in_the_conditioning_is_compared_by_what_it_contributes():
    """A ControlNet in the conditioning used to be compared by its type only: the same prompt with another hint image
    read as the inversion's prompt (and an edit through the hint was warned as 'another cfg')."""
    import architectures

    control, gen = architectures.tiny_controlnet(build("sd1"))
    hint_a, hint_b = torch.rand((1, 64, 64, 3), generator=gen), torch.rand((1, 64, 64, 3), generator=gen)
    apply = host.node_class("ControlNetApplyAdvanced")()
    positive, negative = cond("sd1"), cond("sd1", NEGATIVE)
    with torch.inference_mode():
        with_a = apply.apply_controlnet(positive, negative, control, hint_a, 1.0, 0.0, 1.0)[0]
        again = apply.apply_controlnet(positive, negative, control, hint_a, 1.0, 0.0, 1.0)[0]   # another node
        with_b = apply.apply_controlnet(positive, negative, control, hint_b, 1.0, 0.0, 1.0)[0]
        weaker = apply.apply_controlnet(positive, negative, control, hint_a, 0.5, 0.0, 1.0)[0]
    guidance = {"positive": guidance_checks().conditioning_fingerprint(with_a)}
    assert guidance_checks().is_inversion_prompt(guidance, again)
    assert not guidance_checks().is_inversion_prompt(guidance, with_b) and not guidance_checks().is_inversion_prompt(guidance, weaker)
    assert not guidance_checks().is_inversion_prompt(guidance, positive)


def test_a_compiled_network_is_the_same_checkpoint():
    """A torch.compile object patch (TorchCompileModel, ModelCompile) renames the loaded network's parameters
    "_orig_mod.*": the base weights read through it must be the checkpoint's (it was 'another checkpoint?' after the
    model was unloaded)."""
    import comfy.model_management

    base = build("sd1")
    compiled = base.clone()
    compiled.add_object_patch("diffusion_model", torch.compile(base.get_model_object("diffusion_model"),
                                                               backend="eager"))
    unloaded = patch_checks().base_weights(base)
    comfy.model_management.load_models_gpu([compiled])
    try:
        assert type(compiled.model.diffusion_model).__name__ == "OptimizedModule"
        assert matches(patch_checks().base_weights(compiled), unloaded)
    finally:
        comfy.model_management.unload_all_models()


def test_weights_that_cannot_be_read_are_said_not_skipped(caplog):
    """When the network's weights cannot be read (here: on the meta device; a quantised tensor type may do the same),
    the checkpoint check cannot be made: the user is told so, and the fingerprint is None rather than a wrong one."""
    import copy

    from comfy.model_patcher import ModelPatcher

    base = build("sd1")
    unreadable = ModelPatcher(copy.deepcopy(base.model).to("meta"), base.load_device, base.offload_device)
    caplog.clear()
    assert patch_checks().base_weights(base) is not None and warnings_of(caplog) == []
    assert patch_checks().base_weights(unreadable) is None
    said = warnings_of(caplog)
    assert len(said) == 1 and "its weights could not be read" in said[0], said
