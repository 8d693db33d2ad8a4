"""What the model gets beside the prompt tensor, compared between an inversion and its replays: data objects in the
conditioning, and upstream's hooks.

* Data objects. The fingerprint of a conditioning followed tensors, containers and weight adapters only; any other
  object counted by its type. SD2.1 unCLIP's (and Wan image-to-video's) ``clip_vision_output`` is such an object (the
  host's ``comfy.clip_vision.Output``, tensors as attributes), so the conditioning of another image read as the
  inversion's: source correction with another image's conditioning as source_positive replayed without a word (tiny
  unCLIP, cfg 3: 44 dB instead of 145), and a variation with another image at another cfg was told it was "the
  conditioning this latent was inverted with" at the wrong cfg. The fingerprint now follows data objects' public
  attributes. Another image's conditioning in a plain replay is an edit (a variation), as another prompt is: not
  warned.
* Hooks (upstream ComfyUI only: Create Hook LoRA + Cond Set Props / Set CLIP Hooks; the PyPI fork has no comfy.hooks).
  The host writes a hook's weights into the network while a hooked conditioning is evaluated and keeps the originals
  in ``ModelPatcher.hook_backup``; the base-weights fingerprint taken during a hooked inversion read the hooked
  weights, and every replay was "another checkpoint". The hooks themselves are a model input compared per
  conditioning (check_model_inputs). Hooked runs need upstream: scripts/check_upstream.sh's "hooks" check runs them
  (the same hooks: no warning, 40.4 dB as with the LoRA as a plain patch; another LoRA / strength / none warned,
  17.0 / 21.6 / 18.3 dB); here the fork's side: the base weights read a hook backup as upstream leaves it, and the
  fork's conditionings carry no hooks (no warning).
"""
from __future__ import annotations

import enum
import math
import sys

import pytest
import torch

import host
from inversion_core.fingerprint import MAX_DEPTH, fingerprint, matches
from test_editing_host import warnings_of
from test_replay_fingerprints import LATENT, NEGATIVE, OTHER_CHECKPOINT, build, cond, invert, replay

FAMILY = "sd2unclip"
SOURCE_WARNING = "source_positive: it differs from the positive conditioning this latent was inverted with"
CFG_WARNING = "cfg: the positive conditioning is the one this latent was inverted with"


def bridge():
    return sys.modules[f"{host.PACK_DIR_NAME}.nodes.bridge"]


def nodes_module(name: str):
    """A module of the pack's nodes package as the host imported it (guidance, patch_checks ...)."""
    return sys.modules[f"{host.PACK_DIR_NAME}.nodes.{name}"]


def arch():
    return host.testing_module().architectures()


# --------------------------------------------------------------------------------------- the fingerprint's walk
class Record:
    """A plain data object, as the host's clip_vision.Output."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


class Kind(enum.Enum):
    A = "a"
    B = "b"


def test_a_data_objects_tensors_are_compared_and_its_type_alone_no_longer_is():
    gen = torch.Generator().manual_seed(0)
    embeds, hidden = torch.randn(1, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
    a = Record(image_embeds=embeds, last_hidden_state=hidden)
    assert matches(fingerprint(a), fingerprint(Record(image_embeds=embeds.clone(), last_hidden_state=hidden.clone())))
    assert not matches(fingerprint(a), fingerprint(Record(image_embeds=torch.randn(1, 32, generator=gen),
                                                          last_hidden_state=hidden)))
    assert not matches(fingerprint(a), fingerprint(Record(image_embeds=embeds)))          # an attribute fewer
    # as it sits in a conditioning: unCLIPConditioning's list of dicts
    unclip = lambda out: {"unclip_conditioning": [{"clip_vision_output": out, "strength": 1.0,
                                                   "noise_augmentation": 0.0}]}
    assert not matches(fingerprint(unclip(a)), fingerprint(unclip(Record(image_embeds=-embeds,
                                                                         last_hidden_state=hidden))))
    # plain values inside it too, and enums by name
    assert not matches(fingerprint(Record(t=embeds, size=224)), fingerprint(Record(t=embeds, size=336)))
    assert fingerprint(Kind.A) == "<Kind.A>" and not matches(fingerprint(Record(k=Kind.A)),
                                                             fingerprint(Record(k=Kind.B)))


def test_what_the_walk_leaves_out():
    """Callables (hooks, bound functions), private attributes (caches, sampling-time state) and anything holding a
    network (a ControlNet, a CLIP, a ModelPatcher: compared by type, as before; their parameters are not read) do not
    count; nor do objects without an attribute dict. A cycle stops at MAX_DEPTH."""
    t = torch.ones(3)
    assert matches(fingerprint(Record(t=t, fn=lambda: 1)), fingerprint(Record(t=t, fn=print)))
    assert matches(fingerprint(Record(t=t, _cache=torch.zeros(2))), fingerprint(Record(t=t, _cache=torch.ones(2))))
    read = []
    holder = Record(net=torch.nn.Linear(2, 2), hint=t)
    assert fingerprint(holder) == "<Record>"
    from inversion_core.fingerprint import _walk
    _walk(holder, read.append)
    assert read == []                                   # the network's weights were not sampled
    assert fingerprint(torch.nn.Linear(2, 2)) == "<Linear>"

    class Slotted:
        __slots__ = ("t",)

    class Called(Record):
        def __call__(self):
            return 0

    slotted = Slotted()
    slotted.t = t
    assert fingerprint(slotted) == "<Slotted>" and fingerprint(Called(t=t)) == "<Called>"
    loop = Record(t=t)
    loop.me = loop
    printed = fingerprint(loop)
    depth = 0
    while isinstance(printed, tuple):
        printed = dict(printed[1])["me"]
        depth += 1
    assert printed == "<Record>" and depth == MAX_DEPTH // 2       # each object level is a type and its attributes


def test_weight_adapters_are_still_read_through_their_weights():
    """The host's LoRA adapters carry their tensors in ``weights`` (and a set of keys that the walk does not read)."""
    gen = torch.Generator().manual_seed(1)
    up, down = torch.randn(8, 2, generator=gen), torch.randn(2, 8, generator=gen)
    adapter = Record(loaded_keys={"a.lora_up.weight"}, weights=(up, down, None, None))
    again = Record(loaded_keys={"a.lora_up.weight"}, weights=(up.clone(), down.clone(), None, None))
    assert matches(fingerprint({"k": [(1.0, adapter, 1.0)]}), fingerprint({"k": [(1.0, again, 1.0)]}))
    other = Record(loaded_keys={"a.lora_up.weight"}, weights=(up, -down, None, None))
    assert not matches(fingerprint({"k": [(1.0, adapter, 1.0)]}), fingerprint({"k": [(1.0, other, 1.0)]}))


# ------------------------------------------------------------------------------------------------ SD2.1 unCLIP
def unclip(conditioning, image_seed: int):
    """unCLIPConditioning (the host's node) with the CLIP-vision output of image ``image_seed``."""
    with torch.inference_mode():
        return host.node_class("unCLIPConditioning")().apply_adm(
            conditioning, arch().clip_vision_output(image_seed), 1.0, 0.0)[0]


def psnr(out: torch.Tensor) -> float:
    x0 = arch().make_latent(FAMILY, LATENT, 16)["samples"]
    mse = (out.double() - x0.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10((x0.max() - x0.min()).item() ** 2 / mse)


def test_the_tiny_unclip_model_reads_the_image():
    """The sd2unclip family is the host's SD21UNCLIP (its noise augmentor and label embedding on the image embedding),
    and its prediction depends on which image the conditioning carries."""
    import comfy.model_base

    model = build(FAMILY)
    assert isinstance(model.model, comfy.model_base.SD21UNCLIP)
    a, b = unclip(cond(FAMILY), 11), unclip(cond(FAMILY), 12)
    inverted = invert(model, FAMILY, positive=a)
    assert psnr(replay(model, FAMILY, inverted, positive=a)) - psnr(replay(model, FAMILY, inverted, positive=b)) > 2


def test_source_correction_with_another_images_conditioning_is_warned(caplog):
    """Measured (cfg 3, Exact at its defaults, T=5): with the inversion's conditioning as source 144.9 dB; with
    another image's 44.2 dB, unwarned before (the CLIP-vision output compared by its type)."""
    model = build(FAMILY)
    a, b = unclip(cond(FAMILY), 11), unclip(cond(FAMILY), 12)
    negative = cond(FAMILY, NEGATIVE)
    inverted = invert(model, FAMILY, positive=a, cfg=3.0, negative=negative)
    said = lambda: warnings_of(caplog, SOURCE_WARNING)
    caplog.clear()
    exact = replay(model, FAMILY, inverted, positive=a, cfg=3.0, negative=negative, correction_strength=1.0,
                   source_positive=a)
    both = replay(model, FAMILY, inverted, positive=b, cfg=3.0, negative=negative, correction_strength=1.0,
                  source_positive=b)      # another image as positive and source: exact too, and meant
    assert warnings_of(caplog) == []
    wrong = replay(model, FAMILY, inverted, positive=a, cfg=3.0, negative=negative, correction_strength=1.0,
                   source_positive=b)
    assert len(said()) == 1 and "unCLIP" in said()[0], warnings_of(caplog)
    print(f"[unclip] correction, source the inversion's {psnr(exact):.1f} dB, another image's {psnr(wrong):.1f}, "
          f"another image as both {psnr(both):.1f}")
    assert psnr(exact) > 100 and psnr(both) > 100 and psnr(wrong) < psnr(exact) - 50


def test_another_images_conditioning_is_an_edit_and_the_same_image_is_the_inversions(caplog):
    """A plain replay with another image's conditioning is a variation, as another prompt is an edit: not warned, at
    any cfg (it was told it was the inversion's conditioning at the wrong cfg). The same image through other nodes
    (another CLIP-vision output object, another unCLIPConditioning) is the inversion's: it reconstructs and its cfg
    is judged."""
    model = build(FAMILY)
    a, b = unclip(cond(FAMILY), 11), unclip(cond(FAMILY), 12)
    a_again = unclip(cond(FAMILY), 11)
    assert a_again[0][1]["unclip_conditioning"][0]["clip_vision_output"] is not \
        a[0][1]["unclip_conditioning"][0]["clip_vision_output"]
    inverted = invert(model, FAMILY, positive=a, cfg=3.0)
    guidance = inverted[host.pack_module().inversion_core.LATENT_KEY]["guidance"]
    assert nodes_module("guidance").is_inversion_prompt(guidance, a_again) and not nodes_module("guidance").is_inversion_prompt(guidance, b)
    caplog.clear()
    same = replay(model, FAMILY, inverted, positive=a, cfg=3.0)
    again = replay(model, FAMILY, inverted, positive=a_again, cfg=3.0)
    replay(model, FAMILY, inverted, positive=b, cfg=3.0)
    varied = replay(model, FAMILY, inverted, positive=b, cfg=5.0)
    assert warnings_of(caplog) == []
    assert torch.equal(same, again)
    caplog.clear()
    off = replay(model, FAMILY, inverted, positive=a_again, cfg=5.0)          # the real mismatch is still told
    assert len(warnings_of(caplog, CFG_WARNING)) == 1, warnings_of(caplog)
    print(f"[unclip] cfg 3 inversion: replay {psnr(same):.1f} dB; another image at cfg 5 {psnr(varied):.1f}, the "
          f"inversion's at cfg 5 {psnr(off):.1f}")


def test_an_unclip_workflow_through_the_testing_node(caplog):
    """The same through the executor: InversionTestArchClipVisionOutput (what CLIPVisionEncode gives) into the host's
    unCLIPConditioning, source correction with another image's conditioning warned."""
    arch_in = {"family": FAMILY}
    prompt = {
        **arch().model_nodes(FAMILY),
        "latent": {"class_type": "InversionTestArchLatent", "inputs": {**arch_in, "seeds": LATENT, "size": 16}},
    }
    for name, seed in (("a", 11), ("b", 12)):
        prompt[f"image_{name}"] = {"class_type": "InversionTestArchClipVisionOutput", "inputs": {"seed": seed}}
        prompt[f"pos_{name}"] = {"class_type": "unCLIPConditioning", "inputs": {
            "conditioning": ["positive", 0], "clip_vision_output": [f"image_{name}", 0], "strength": 1.0,
            "noise_augmentation": 0.0}}
    from test_architectures import defaults
    prompt["invert"] = {"class_type": "ExactInvert", "inputs": {
        **defaults("ExactInvert", steps=5, cfg=3.0), "model": ["model", 0], "positive": ["pos_a", 0],
        "negative": ["negative", 0], "latent": ["latent", 0]}}
    for name, source in (("exact", "pos_a"), ("wrong", "pos_b")):
        prompt[name] = {"class_type": "InvertedLatentSampler", "inputs": {
            **defaults("InvertedLatentSampler", cfg=3.0, correction_strength=1.0), "model": ["model", 0],
            "positive": ["pos_a", 0], "negative": ["negative", 0], "source_positive": [source, 0],
            "inverted_latent": ["invert", 0]}}
    caplog.clear()
    out = host.run_workflow(prompt)
    assert len(warnings_of(caplog, SOURCE_WARNING)) == 1, warnings_of(caplog)
    exact, wrong = psnr(out["exact"][0]["samples"]), psnr(out["wrong"][0]["samples"])
    assert exact > 100 and wrong < exact - 50, (exact, wrong)


# ------------------------------------------------------------------------------------------------- hooks
def test_the_base_weights_read_upstreams_hook_backup():
    """Upstream's ModelPatcher.patch_hook_weight_to_device writes the hooked weight into the network and keeps the
    original in ``hook_backup[key] = (weight, device)`` until the hooks are unpatched after sampling; the base weights
    are read from there (measured on upstream: the hooked inversion's record held the hooked weights and every replay
    said "another checkpoint"; scripts/check_upstream.sh "hooks"). The fork has no hooks: its patcher state is set
    here as upstream leaves it, on the fork's real ModelPatcher, and put back."""
    model = build("sd1")
    before = nodes_module("patch_checks").base_weights(model)
    net = model.model.diffusion_model
    picked = [name for name, _ in before]
    assert not hasattr(model, "hook_backup") or not model.hook_backup
    saved = {}
    with torch.no_grad(), torch.inference_mode(False):
        for name in picked:
            param = net.get_parameter(name)
            saved[name] = param.detach().clone()
    try:
        model.hook_backup = {"diffusion_model." + name: (saved[name], saved[name].device) for name in picked}
        with torch.inference_mode():
            for name in picked:
                net.get_parameter(name).add_(1.0)                      # the hook's LoRA, written in place
        hooked = fingerprint([(name, net.get_parameter(name)) for name in picked])
        assert not matches(hooked, before)
        assert matches(nodes_module("patch_checks").base_weights(model), before)
    finally:
        with torch.inference_mode():
            for name in picked:
                net.get_parameter(name).copy_(saved[name])
        del model.hook_backup
    assert matches(nodes_module("patch_checks").base_weights(model), before)


def test_the_forks_conditionings_carry_no_hooks(caplog):
    """hooks_state on a host without hooks: every item none, so the fork's replays are never told about hooks."""
    model = build("sd1")
    inverted = invert(model, "sd1", cfg=2.0)
    guidance = inverted[host.pack_module().inversion_core.LATENT_KEY]["guidance"]
    assert guidance["hooks"]["positive"]["count"] == 0 and guidance["hooks"]["negative"]["count"] == 0
    caplog.clear()
    replay(model, "sd1", inverted, cfg=2.0)
    replay(model, "sd1", inverted, positive=cond("sd1", "5"), cfg=2.0)
    assert warnings_of(caplog, "hooks") == [] and warnings_of(caplog, OTHER_CHECKPOINT) == []
