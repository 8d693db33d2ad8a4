"""A future ComfyUI that renames or drops a host internal the pack reads must fail loudly, never return a quiet wrong
result. Each test simulates one such host change on the PyPI fork (monkeypatching the host, never the pack) and checks
that the node raises or warns naming the host feature; without the change the same call stays silent and correct."""
from __future__ import annotations

import pytest
import torch

import host
from host import WorkflowError, run_workflow
from test_editing_host import warnings_of
from test_nodes_host import invert_and_replay

EXACT = {"preset": "balanced", "tolerance": 1e-4, "budget": 3, "memory": 3}
UNSUPPORTED = "not supported"


def bridge():
    return host.pack_module().nodes.bridge


def guidance():
    return host.pack_module().nodes.guidance


def patch_checks():
    return host.pack_module().nodes.patch_checks


@pytest.fixture(scope="module")
def inverted():
    """A tiny EPS inversion (4 steps, Exact) with its model and prompt, for the engine tests."""
    inv = run_workflow(invert_and_replay(steps=4, method="ExactInvert", extra=EXACT), outputs=["invert"])["invert"][0]
    return host.tiny_model(), host.tiny_conditioning(), inv


def edit(model, cond, inv, mode="pnp"):
    """The engine's edit (a new prompt) and the plain replay of it, by direct node calls."""
    node, sampler = host.node_class("InversionEditEngine")(), host.node_class("InvertedLatentSampler")()
    patched, = node.patch(model, inv, cond, mode, window_start=0.0, window_end=1.0, residual_features=mode == "pnp")
    target = host.tiny_conditioning(seed=42)
    with torch.inference_mode():
        edited = sampler.sample(patched, target, cond, 1.0, inv)[0]["samples"]
        plain = sampler.sample(model, target, cond, 1.0, inv)[0]["samples"]
    return edited, plain


def test_the_unchanged_host_edits(inverted):
    """The baseline the simulations below break: the engine moves the edit away from the plain replay."""
    edited, plain = edit(*inverted)
    assert (edited - plain).abs().max().item() > 1e-3


def test_a_model_function_wrapper_the_host_no_longer_calls_is_an_error(inverted, monkeypatch):
    """A host whose sampling stops calling model_options["model_function_wrapper"] (superseded by its newer wrapper
    API) never runs the engine: the edit came out as the plain replay, without a word."""
    import comfy.samplers

    original = comfy.samplers.calc_cond_batch

    def without_wrapper(model, conds, x, timestep, model_options):
        return original(model, conds, x, timestep,
                        {k: v for k, v in model_options.items() if k != "model_function_wrapper"})

    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", without_wrapper)
    with pytest.raises(RuntimeError, match="model_function_wrapper") as e:
        edit(*inverted)
    assert UNSUPPORTED in str(e.value)


def test_a_wrapper_kept_under_another_key_is_an_error(inverted, monkeypatch):
    """A host that keeps the model function wrapper under another model_options key: the pack could not find the
    engine on its MODEL (source correction's offsets pass, the patch checks), and here the host does not call it."""
    import comfy.model_patcher

    def renamed(self, fn):
        self.model_options["unet_wrapper"] = fn

    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "set_model_unet_function_wrapper", renamed)
    with pytest.raises(RuntimeError, match="model_function_wrapper") as e:
        edit(*inverted)
    assert UNSUPPORTED in str(e.value)


def test_attention_replace_patches_kept_elsewhere_are_an_error(inverted, monkeypatch):
    """A host that stores attention replace patches elsewhere than transformer_options["patches_replace"]: the engine
    reads another node's patch (IP-Adapter) from there to keep it working underneath its own."""
    import comfy.model_patcher

    def elsewhere(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options.setdefault("transformer_options", {})
        to.setdefault("replace_patches", {}).setdefault(name, {})[(block_name, number, transformer_index)] = patch

    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "set_model_patch_replace", elsewhere)
    with pytest.raises(RuntimeError, match="patches_replace") as e:
        edit(*inverted)
    assert UNSUPPORTED in str(e.value)


@pytest.mark.parametrize("mode", ("pnp", "p2p"))
def test_engine_context_that_never_reaches_the_attention_is_an_error(inverted, monkeypatch, mode):
    """A host that no longer hands transformer_options' other entries to the attention patches: the engine's patches
    ran without the engine's context and injected nothing (the edit came out as the plain replay, silently)."""
    import comfy.ldm.modules.attention as attention

    original = attention.BasicTransformerBlock.forward
    key = host.pack_module().nodes.edit.KEY

    def forward(self, x, context=None, transformer_options={}):
        return original(self, x, context=context,
                        transformer_options={k: v for k, v in transformer_options.items() if k != key})

    monkeypatch.setattr(attention.BasicTransformerBlock, "forward", forward)
    with pytest.raises(RuntimeError, match="transformer_options") as e:
        edit(*inverted, mode=mode)
    assert UNSUPPORTED in str(e.value)


def invert(model, steps=3, scheduler="auto", batch=1):
    cond = host.tiny_conditioning()
    latent = host.tiny_latent(batch=batch, size=8)
    with torch.inference_mode():
        return host.node_class("DDIMInvert")().invert(model, cond, cond, latent, steps, scheduler, 1.0)


def test_a_model_kind_the_host_no_longer_names_is_warned(monkeypatch, caplog):
    """A host that renamed CONST: a flow model's kind was its dynamic class's name, and "auto" silently took karras
    (a poor grid for flow models) with the flow checks off. Without the change nothing is said."""
    import comfy.model_sampling

    model = host.tiny_model("flow")
    invert(model)
    assert not warnings_of(caplog, "kinds the pack knows")
    _, plain = invert(model)
    monkeypatch.delattr(comfy.model_sampling, "CONST")
    _, renamed = invert(model)
    said = warnings_of(caplog, "kinds the pack knows")
    assert said and "this ComfyUI has no CONST" in said[0] and UNSUPPORTED in said[0], said
    assert not torch.equal(plain, renamed)      # what the warning is about: another schedule than 'auto' means


def test_a_guider_without_original_conds_is_warned(caplog):
    """A CFGGuider whose converted conditionings are not in original_conds: the batch-pairing, cfg and image-input
    checks read nothing and were skipped unsaid."""
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(host.tiny_model())
    guider.set_conds(host.tiny_conditioning(batch=2), host.tiny_conditioning(batch=2))
    with pytest.raises(ValueError, match="conditioning batch is 2"):
        guidance().check_guider_conditioning(guider, 3, "the replay")
    assert not warnings_of(caplog, "original_conds")
    del guider.original_conds
    guidance().check_guider_conditioning(guider, 3, "the replay")
    said = warnings_of(caplog, "original_conds")
    assert len(said) == 1 and said[0].startswith("[comfyui-inversion] The replay") and UNSUPPORTED in said[0], said


def test_a_guider_without_a_cfg_is_warned(caplog):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(host.tiny_model())
    guider.set_cfg(3.0)
    assert guidance().guider_cfg(guider) == 3.0 and not warnings_of(caplog, "numeric cfg")
    del guider.cfg
    assert guidance().guider_cfg(guider) is None
    assert warnings_of(caplog, "numeric cfg")


def test_sub_batches_need_the_prepared_conds_to_be_readable():
    """Items are solved in sub-batches only when no prepared cond pairs rows with items; where the host keeps them
    elsewhere (no ``conds`` on the guider, no ``model_conds`` in an entry, a model cond without ``cond``, a
    ControlNet without ``cond_hint_original``) that cannot be told, and the whole batch is evaluated (it was taken for
    uniform: the host then pairs the remaining items with the first items' rows)."""
    import comfy.conds
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(host.tiny_model())
    one, two = torch.zeros(1, 4, 16), torch.zeros(2, 4, 16)
    b = bridge()

    def independent(*entries):
        guider.conds = {"positive": list(entries)}
        return b._items_independent(guider)

    assert independent({"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(one)}})
    assert not independent({"model_conds": {"c_crossattn": comfy.conds.CONDCrossAttn(two)}})
    assert not independent({"model_conds_v2": {"c_crossattn": comfy.conds.CONDCrossAttn(two)}})

    class Renamed:      # a model cond keeping its tensor under another name
        def __init__(self, t):
            self.tensor = t

    assert not independent({"model_conds": {"c_crossattn": Renamed(two)}})

    class Control:      # a ControlNet keeping its hint under another name
        hint, previous_controlnet = two, None

    assert not independent({"model_conds": {}, "control": Control()})
    del guider.conds
    assert not b._items_independent(guider)


def test_a_model_patcher_without_its_patch_dicts_is_warned(caplog):
    """A LoRA kept elsewhere than ModelPatcher.patches was not compared between inversion and replay (both read
    as unpatched)."""
    model = host.tiny_model().clone()
    patch_checks().raw_patch_signature(model)
    assert not warnings_of(caplog, "ModelPatcher")
    del model.patches
    patch_checks().raw_patch_signature(model)
    said = warnings_of(caplog, "ModelPatcher")
    assert said and "has no patches dict" in said[0] and UNSUPPORTED in said[0], said


def test_a_model_patcher_without_its_network_is_warned(caplog):
    model = host.tiny_model().clone()
    assert patch_checks().base_weights(model) is not None and not warnings_of(caplog, "diffusion_model")
    model.model = None
    assert patch_checks().base_weights(model) is None
    assert warnings_of(caplog, "diffusion_model")


def test_the_compute_dtype_of_a_host_model_without_get_dtype_is_its_weights(monkeypatch):
    """GNRI sizes its finite differences by the dtype the network computes in; a host model without get_dtype read as
    float32 for bf16 weights (a 10x too small step: test_gnri), silently."""
    import comfy.model_base

    model = host.tiny_model("eps").model
    model.diffusion_model.to(torch.bfloat16)
    model.diffusion_model.dtype = torch.bfloat16                  # what the host's get_dtype() reads
    assert bridge()._compute_dtype(model) == torch.bfloat16
    monkeypatch.delattr(comfy.model_base.BaseModel, "get_dtype")
    assert bridge()._compute_dtype(model) == torch.bfloat16


def test_a_controlnet_without_its_hint_is_warned(caplog):
    """A ControlNet object keeping its hint image elsewhere than cond_hint_original was fingerprinted by its type only:
    a replay with another hint image passed for the inversion's conditioning."""
    class Control:      # a future host's ControlNet: the hint under another name, next to its network (which the
        # fingerprint does not walk into: an object holding a network is compared by its type)
        def __init__(self, hint):
            self.hint, self.strength, self.previous_controlnet = hint, 1.0, None
            self.control_model = torch.nn.Conv2d(3, 4, 1)

    cond = host.tiny_conditioning()
    a = [[cond[0][0], dict(cond[0][1], control=Control(torch.zeros(1, 3, 8, 8)))]]
    b = [[cond[0][0], dict(cond[0][1], control=Control(torch.ones(1, 3, 8, 8)))]]
    fingerprint_a = guidance().conditioning_fingerprint(a)
    assert host.pack_module().inversion_core.fingerprint.matches(fingerprint_a, guidance().conditioning_fingerprint(b))
    said = warnings_of(caplog, "cond_hint_original")
    assert said and UNSUPPORTED in said[0], said


def test_latent_format_names_the_host_no_longer_has_are_warned(monkeypatch, caplog):
    """The family presets (the engine's 'auto' layers and residual block, EasyInv's SDXL preset) are keyed on the
    host's latent format class names; a host that renamed SD15 gave SD1.x models the defaults without a word."""
    import comfy.latent_formats

    model = host.tiny_model()
    assert bridge().model_family(model) == "TinyLatentFormat" and not warnings_of(caplog, "latent_formats")
    monkeypatch.delattr(comfy.latent_formats, "SD15")
    assert bridge().model_family(model) == "TinyLatentFormat"
    said = warnings_of(caplog, "latent_formats has no SD15")
    assert said and UNSUPPORTED in said[0], said


def test_a_transformer_block_without_disable_self_attn_is_an_error(inverted, monkeypatch):
    """The engine leaves alone blocks whose attn1 reads the text (disable_self_attn: the SD x4 upscaler's); a host
    that renamed the flag had every such block injected with the source's self-attention, silently."""
    import comfy.ldm.modules.attention as attention

    model, cond, inv = inverted
    blocks = [m for m in model.model.diffusion_model.modules() if isinstance(m, attention.BasicTransformerBlock)]
    assert blocks
    for blk in blocks:
        monkeypatch.delattr(blk, "disable_self_attn")
    with pytest.raises(RuntimeError, match="has no disable_self_attn") as e:
        edit(model, cond, inv)
    assert UNSUPPORTED in str(e.value)


def test_an_mmdit_x_block_without_its_flag_is_an_error():
    """SD3.5 medium's MMDiT-X blocks are refused by their x_block_self_attn flag; a block that can run the extra
    attention (upstream's pre_attention_x) but has no flag would have been run without it. The PyPI fork's blocks
    have neither and pass."""
    import types

    edit_module = host.pack_module().nodes.edit
    assert edit_module._mmdit_x(types.SimpleNamespace(x_block=types.SimpleNamespace())) is False
    upstream_like = types.SimpleNamespace(x_block=types.SimpleNamespace(pre_attention_x=None, x_block_self_attn=True))
    assert edit_module._mmdit_x(upstream_like) is True
    renamed = types.SimpleNamespace(x_block=types.SimpleNamespace(pre_attention_x=None, self_attention_x=True))
    with pytest.raises(RuntimeError, match="has no x_block_self_attn") as e:
        edit_module._mmdit_x(renamed)
    assert UNSUPPORTED in str(e.value)
