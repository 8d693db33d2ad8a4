"""Other nodes' MODEL patches before the inversion and the replay (issue: "no silent wrong results").

A replay reconstructs only if the model is a function of its input: the same latent and sigma give the same
prediction every time. Patches that draw random numbers on every call (TomePatchModel's token merge, HyperTile's tile
size with swap_size above 2) or keep state between calls (upstream's APG with momentum) break that, and an inversion
through them solved for a moving target: no replay gives the image back, on both branches alike, and nothing said so
(audit on upstream 0.3.64, tiny SD1, BDIA at T=10 whose replay of a function is bit-exact: ToMe 47 dB, HyperTile 30 dB;
APG momentum -0.5 on the EPS reference model at cfg 3: Exact 28.6 dB instead of 49.8, BDIA 10 dB). Now the inversion
evaluates its first model call once more when the MODEL carries anything besides weight patches, and a changed output
is warned at the inversion and again at every replay of its latent. Deterministic patches (FreeU, PAG, SAG ...) cost
that one evaluation and say nothing; a plain model, or weight patches only, is not checked at all.

Tiny SD1 (tests/architectures.py: attention at the full-resolution level, where ToMe and HyperTile act), 16x16
latent, BDIA Invert at its defaults with T=5 (scheduler auto) (its replay of a function is exact, so any change shows).
"""
from __future__ import annotations

import sys

import pytest

import host
from test_architectures import add_invert, add_twin, base, defaults, psnr, run
from test_editing_host import warnings_of

FAMILY = "sd1"
AT_INVERSION = "inversion: the model's output changed between two evaluations at the same input"
AT_REPLAY = "this latent was inverted with a model whose output changed between two evaluations"
PATCHES_DIFFER = "its patches differ from those of the model this latent was inverted with"
RANDOM = {"ToMe": ("TomePatchModel", {"ratio": 0.3}),
          "HyperTile": ("HyperTile", {"tile_size": 32, "swap_size": 3, "max_depth": 0, "scale_depth": False})}
DETERMINISTIC = {"FreeU": ("FreeU", {}), "PAG": ("PerturbedAttentionGuidance", {}),
                 "SAG": ("SelfAttentionGuidance", {})}


def patched(patch, on_replay: bool = True, method: str = "BDIAInvert") -> dict:
    """Tiny SD1 + the host node ``patch`` ((class, inputs) or None) before the inversion node, and before the
    Inverted Latent Sampler too unless ``on_replay`` is False."""
    prompt = add_invert(base(FAMILY), FAMILY, method)
    # the node's default scheduler (auto: karras), which starts at sigma_max (BDIA is exact on any schedule)
    prompt["invert"]["inputs"]["scheduler"] = defaults(method)["scheduler"]
    if patch is not None:
        name, inputs = patch
        prompt["patched"] = {"class_type": name, "inputs": {**defaults(name, **inputs), "model": ["model", 0]}}
        prompt["invert"]["inputs"]["model"] = ["patched", 0]
        prompt["replay"]["inputs"]["model"] = ["patched", 0] if on_replay else ["model", 0]
    return prompt


def reconstruction(out) -> float:
    return psnr(out["replay"][0]["samples"], out["latent"][0]["samples"])


@pytest.mark.parametrize("name", list(RANDOM))
def test_a_patch_that_is_random_on_every_call_is_warned_at_the_inversion_and_the_replay(name, caplog):
    caplog.clear()
    out = run(FAMILY, patched(RANDOM[name]))
    entry = out["invert"][0]["inversion"]
    assert len(warnings_of(caplog, AT_INVERSION)) == 1, warnings_of(caplog)
    assert len(warnings_of(caplog, AT_REPLAY)) == 1, warnings_of(caplog)
    assert warnings_of(caplog, PATCHES_DIFFER) == []            # the same patch on both branches
    # measured: ToMe 1.6e-2, HyperTile 0.12 of the model's prediction (the threshold is 1e-4)
    assert entry["model_signature"]["varies"] > 1e-3, entry["model_signature"]
    assert any(AT_INVERSION.split(": ", 1)[1] in w for w in entry["warnings"]), entry["warnings"]
    assert entry["stats"]["check_evals"] == 1.0
    # the replay that is bit-exact on a function is not (measured: ToMe 52.7 dB, HyperTile 36.0)
    assert reconstruction(out) < 80, reconstruction(out)


@pytest.mark.parametrize("name", [None, *DETERMINISTIC])
def test_deterministic_patches_cost_one_check_and_say_nothing(name, caplog):
    """FreeU, PAG and SAG (which carries the attention of one call into its guidance function) are functions of the
    input: checked (one evaluation more, counted) and silent, and BDIA's replay stays exact. A plain model is not
    checked at all."""
    caplog.clear()
    out = run(FAMILY, patched(DETERMINISTIC.get(name)))
    entry = out["invert"][0]["inversion"]
    assert warnings_of(caplog) == []
    assert "varies" not in entry["model_signature"]
    assert entry["stats"]["check_evals"] == (0.0 if name is None else 1.0)
    assert entry["stats"]["forward_evals"] == sum(s["forward_evals"] for s in entry["step_stats"]) + (name is not None)
    assert reconstruction(out) > 150, (name, reconstruction(out))
    report = sys.modules[f"{host.PACK_DIR_NAME}.nodes.report"]        # the Inversion Report says what the check cost
    x0 = out["latent"][0]["samples"]
    assert ("(of which 1 checked that the patched model is a function" in report.report_table(x0, x0, entry)) \
        == (name is not None)


def test_a_random_patch_on_the_replay_only_is_a_patch_difference_not_a_varying_inversion(caplog):
    caplog.clear()
    run(FAMILY, patched(RANDOM["ToMe"], on_replay=False))           # on the inversion only
    assert len(warnings_of(caplog, AT_INVERSION)) == 1 and len(warnings_of(caplog, PATCHES_DIFFER)) == 1, \
        warnings_of(caplog)
    prompt = patched(RANDOM["ToMe"])
    prompt["invert"]["inputs"]["model"] = ["model", 0]              # on the replay only
    caplog.clear()
    run(FAMILY, prompt)
    assert warnings_of(caplog, "changed between two evaluations") == []
    assert len(warnings_of(caplog, PATCHES_DIFFER)) == 1, warnings_of(caplog)


def test_the_sampler_twins_check_and_warn_too(caplog):
    """SamplerCustomAdvanced: the BDIA Inversion SAMPLER checks its guider's model; the Inverted Replay SAMPLER finds
    the inversion by its noise and warns from what the inversion recorded."""
    prompt = add_twin(patched(RANDOM["ToMe"]), FAMILY, "BDIAInvert")
    prompt["guider"]["inputs"]["model"] = ["patched", 0]
    caplog.clear()
    run(FAMILY, prompt, ["twin_replay"])
    assert len(warnings_of(caplog, AT_INVERSION)) == 1, warnings_of(caplog)
    assert len(warnings_of(caplog, AT_REPLAY)) == 1, warnings_of(caplog)


SETTINGS_DIFFER = "the settings of its patches"
OTHER_SETTINGS = {  # the same node before the replay with another value (measured on tiny SD1, BDIA T=5, unwarned
    #                 before patch settings were compared: PAG 26.7 dB, Deep Shrink 21.8, SAG at cfg 3 17.5)
    "PAG": ("PerturbedAttentionGuidance", {"scale": 3.0}, {"scale": 0.5}),
    "Deep Shrink": ("PatchModelAddDownscale", {"downscale_factor": 2.0}, {"downscale_factor": 3.0}),
    "SAG": ("SelfAttentionGuidance", {"scale": 0.5}, {"scale": 2.0}),
}


@pytest.mark.parametrize("name", list(OTHER_SETTINGS))
def test_the_same_patch_node_with_other_settings_on_the_replay_is_warned(name, caplog):
    node, at_inversion, at_replay = OTHER_SETTINGS[name]
    prompt = patched((node, at_inversion))
    if name == "SAG":                   # SAG acts on the unconditional branch: cfg > 1 on both sides
        prompt["invert"]["inputs"]["cfg"] = prompt["replay"]["inputs"]["cfg"] = 3.0
    caplog.clear()
    same = run(FAMILY, prompt)
    assert warnings_of(caplog, PATCHES_DIFFER) == [], warnings_of(caplog)
    prompt["replay_patched"] = {"class_type": node, "inputs": {**defaults(node, **at_replay), "model": ["model", 0]}}
    prompt["replay"]["inputs"]["model"] = ["replay_patched", 0]
    caplog.clear()
    other = run(FAMILY, prompt)
    said = warnings_of(caplog, PATCHES_DIFFER)
    assert len(said) == 1 and SETTINGS_DIFFER in said[0], warnings_of(caplog)
    assert reconstruction(same) > 150 and reconstruction(other) < 60, (reconstruction(same), reconstruction(other))


GUIDER_DIFFERS = "but the guider is not the inversion's"


@pytest.mark.parametrize("replay_guider, warned", [
    (("PerpNegGuider", {"cfg": 3.0, "neg_scale": 1.0}), False),        # the inversion's own: exact, quiet
    (("PerpNegGuider", {"cfg": 6.0, "neg_scale": 1.0}), True),         # another scale: 4.24 RMS off, was unwarned
    (("PerpNegGuider", {"cfg": 3.0, "neg_scale": 3.0}), True),
    (("CFGGuider", {"cfg": 3.0}), True),                               # another guider type: 1.57 off
])
def test_a_replay_guider_other_than_the_inversions_is_warned(replay_guider, warned, caplog):
    """Guiders with their own prediction (PerpNeg, DualCFG) record no cfg the CFGGuider check can read, so the same
    positive replayed at another scale or through another guider type passed as a reconstruction. Now the guider's
    type, numeric settings and extra conditionings are compared (BDIA: its replay of the same guider is exact)."""
    prompt = add_twin(base(FAMILY), FAMILY, "BDIAInvert")
    prompt["empty"] = {"class_type": "InversionTestArchConditioning", "inputs": {"family": FAMILY, "seeds": "7",
                                                                                "tokens": 4}}
    empty = ["empty", 0]           # PerpNeg with empty = negative is CFG: its neg_scale would change nothing
    prompt["guider"] = {"class_type": "PerpNegGuider", "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], "empty_conditioning": empty,
        "cfg": 3.0, "neg_scale": 1.0}}
    name, settings = replay_guider
    prompt["replay_guider"] = {"class_type": name, "inputs": {
        "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0], **settings,
        **({"empty_conditioning": empty} if name == "PerpNegGuider" else {})}}
    prompt["twin_replay"]["inputs"]["guider"] = ["replay_guider", 0]
    caplog.clear()
    out = run(FAMILY, prompt, ["twin_replay", "latent"])
    err = (out["twin_replay"][0]["samples"] - out["latent"][0]["samples"]).pow(2).mean().sqrt().item()
    said = warnings_of(caplog, GUIDER_DIFFERS)
    assert len(said) == int(warned), warnings_of(caplog)
    assert (err > 0.1) if warned else (err < 1e-5), err


def test_what_a_patch_function_keeps_between_calls_is_not_read_as_its_settings():
    """Upstream's APG keeps the previous sigma and a running average in its closure (``nonlocal``): the inversion's
    record and the replay read them at other moments, and the same APG node on both sides was warned as 'the settings
    of its patches' differ (upstream check). The values a patch function assigns are its state and are left out; the
    values it was made with still count."""
    import torch

    checks = sys.modules[f"{host.pack_module().__name__}.nodes.patch_checks"]
    with torch.inference_mode():
        model = host.testing_module().architectures().build_model(FAMILY, 0)

    def made(scale):                      # the shape of a patch node's closure: a setting and a state
        previous = None

        def post_cfg(args):
            nonlocal previous
            previous = float(args["sigma"].flatten()[0]) * scale
            return args["denoised"]
        return post_cfg

    def settings(scale):
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(made(scale))
        return patched, checks.raw_patch_signature(patched)["settings"]

    patched, before = settings(2.0)
    patched.model_options["sampler_post_cfg_function"][0]({"sigma": torch.ones(1), "denoised": None})
    assert checks.raw_patch_signature(patched)["settings"] == before
    assert settings(3.0)[1] != before

    def shared(ratio):                    # ToMe's shape: one patch assigns a cell the other only reads
        unmerge = None

        def merge(q, k, v, extra):
            nonlocal unmerge
            unmerge = lambda x: x * ratio        # noqa: E731
            return q, k, v

        def unmerged(n, extra):
            return n if unmerge is None else unmerge(n)
        return merge, unmerged

    pair = model.clone()
    merge, unmerged = shared(0.5)
    pair.set_model_attn1_patch(merge)
    pair.set_model_attn1_output_patch(unmerged)
    before = checks.raw_patch_signature(pair)["settings"]
    merge(None, None, None, {})
    assert checks.raw_patch_signature(pair)["settings"] == before


def test_a_guider_setting_only_the_replay_has_is_a_difference(caplog):
    """A custom guider that sets a numeric attribute at run time has it on the replay's side only: it was compared
    only over the inversion's settings and passed unwarned."""
    import comfy.samplers
    import torch

    b = sys.modules[f"{host.pack_module().__name__}.nodes.guidance"]

    class ScaledGuider(comfy.samplers.CFGGuider):           # its own prediction: not the host's CFG
        def predict_noise(self, x, timestep, model_options={}, seed=None):
            return super().predict_noise(x, timestep, model_options, seed) * getattr(self, "gain", 1.0)

    positive, negative = host.tiny_conditioning(), host.tiny_conditioning(seed=42)

    def guider(**attrs):
        g = ScaledGuider(host.tiny_model())
        g.set_conds(positive, negative)
        g.set_cfg(3.0)
        g.__dict__.update(attrs)
        return g

    with torch.inference_mode():
        guidance = b.guidance_of(guider())
    caplog.clear()
    b.check_replay_guider(guidance, guider(), positive, negative, "Replay")
    assert warnings_of(caplog, GUIDER_DIFFERS) == []
    b.check_replay_guider(guidance, guider(gain=2.0), positive, negative, "Replay")
    said = warnings_of(caplog, GUIDER_DIFFERS)
    assert len(said) == 1 and "gain 2.0 (inversion: None)" in said[0], said
