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

