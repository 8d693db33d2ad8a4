"""5-D latents [batch, channels, frames, height, width]: what upstream ComfyUI's video models (Wan 2.1 / 2.2,
HunyuanVideo, LTXV, Cosmos) sample, and what Qwen-Image's VAE encodes an image to (one frame). The inversion nodes
refused every such latent ("expected image latents [batch, channels, height, width]"), while their SAMPLER twins ran.

The model is the fork's tiny UNet run per frame with a cross-frame term (tests/testing_nodes: ``video``, a latent
format of 3 dimensions as upstream's video formats declare), through the host's executor. The real upstream
families are checked by scripts/check_upstream.sh ("families" checks). Numbers in the comments were measured on this
code (``pytest -s`` prints them).
"""
from __future__ import annotations

import torch

from host import Session
from test_architectures import defaults

STEPS = 8
FRAMES, SIZE = 3, 16
_session = Session()


def base(batch: int = 1, frames: int = FRAMES, prompts: int = 1) -> dict:
    return {
        "model": {"class_type": "InversionTestTinyModel",
                  "inputs": {"kind": "flow", "seed": 0, "channels": 4, "video": True}},
        "positive": {"class_type": "InversionTestConditioning",
                     "inputs": {"seed": 1, "batch": prompts, "tokens": 4, "dim": 16}},
        "negative": {"class_type": "InversionTestConditioning", "inputs": {"seed": 2, "batch": 1, "tokens": 4, "dim": 16}},
        "target": {"class_type": "InversionTestConditioning", "inputs": {"seed": 7, "batch": 1, "tokens": 4, "dim": 16}},
        "latent": {"class_type": "InversionTestLatent",
                   "inputs": {"seed": 3, "batch": batch, "channels": 4, "size": SIZE, "frames": frames}},
    }


def links(**given) -> dict:
    return {k: [v, 0] for k, v in given.items()}


def invert(prompt: dict, method: str = "ExactInvert", node: str = "invert", **given) -> dict:
    prompt[node] = {"class_type": method, "inputs": {
        **defaults(method, steps=STEPS, **given), **links(model="model", positive="positive", negative="negative",
                                                          latent="latent")}}
    return prompt


def replay(prompt: dict, node: str = "replay", source: str = "invert", positive: str = "positive", **given) -> dict:
    prompt[node] = {"class_type": "InvertedLatentSampler", "inputs": {
        **defaults("InvertedLatentSampler", **given),
        **links(model="model", positive=positive, negative="negative", inverted_latent=source)}}
    return prompt


def run(prompt: dict, outputs=None):
    return _session.run(prompt, outputs)


def rms(a, b) -> float:
    return (a.float() - b.float()).pow(2).mean().sqrt().item()


def test_every_inversion_node_inverts_and_replays_a_video_latent():
    """Each node's LATENT keeps the 5-D shape and its replay reconstructs the video; the exact methods beat DDIM's
    one-step approximation by far (measured replay RMS: DDIM 0.0237, EasyInv 0.045, Exact (preset exact) 8.4e-06,
    GNRI (newton) 5.7e-05, PreciseInv 2.1e-04, BDIA 0)."""
    prompt = base()
    methods = ("DDIMInvert", "EasyInvInvert", "ExactInvert", "GNRIInvert", "PreciseInvInvert", "BDIAInvert")
    extra = {"ExactInvert": {"preset": "exact"}, "GNRIInvert": {"variant": "newton"}}
    for m in methods:
        invert(prompt, m, node=f"inv_{m}", **extra.get(m, {}))
        replay(prompt, node=f"rep_{m}", source=f"inv_{m}")
    out = run(prompt)
    x0 = out["latent"][0]["samples"]
    assert x0.shape == (1, 4, FRAMES, SIZE, SIZE)
    got = {}
    for m in methods:
        assert out[f"inv_{m}"][0]["samples"].shape == x0.shape, m
        assert out[f"rep_{m}"][0]["samples"].shape == x0.shape, m
        got[m] = rms(out[f"rep_{m}"][0]["samples"], x0)
    print("[video latents] replay RMS " + ", ".join(f"{m} {v:.3g}" for m, v in got.items()))
    assert 0.0 < got["DDIMInvert"] < 0.2
    for m in ("ExactInvert", "GNRIInvert", "PreciseInvInvert", "BDIAInvert"):
        assert got[m] < got["DDIMInvert"] / 10, (m, got)


def test_an_image_latent_on_a_video_model_is_one_frame():
    """An image latent (EmptySD3LatentImage's, or another VAE's [B, C, H, W]) on a model whose latents are 5-D is
    inverted as one frame, as the host's samplers treat it (it reached the network as 4-D: a crash inside the model)."""
    prompt = replay(invert(base(frames=0), preset="exact"))
    out = run(prompt)
    x0 = out["latent"][0]["samples"]
    assert x0.shape == (1, 4, SIZE, SIZE)
    inv, back = out["invert"][0]["samples"], out["replay"][0]["samples"]
    assert inv.shape == back.shape == (1, 4, 1, SIZE, SIZE)
    err = rms(back, x0.unsqueeze(2))
    print(f"[video latents] image latent as one frame: replay RMS {err:.3g}")
    assert err < 1e-4           # measured 1.2e-05


def test_a_mask_on_a_video_is_per_frame_as_the_hosts_noise_mask():
    """A MASK's items are the video's frames (the host's comfy.utils.reshape_mask for 3-D latents): with only frame 1
    editable, frames 0 and 2 stay on the stored trajectory (the image back, bit for bit up to round-off) while frame 1
    takes the edit prompt. A single MASK applies to every frame and every item of a batch."""
    prompt = invert(base(batch=2))
    prompt["frame_mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE * 8, "height": SIZE * 8}}
    prompt["one"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": SIZE * 8, "height": SIZE * 8}}
    # three frames: 0, 1 (edit), 0
    prompt["frames01"] = {"class_type": "MaskToImage", "inputs": {"mask": ["frame_mask", 0]}}
    prompt["frames1"] = {"class_type": "MaskToImage", "inputs": {"mask": ["one", 0]}}
    prompt["batch01"] = {"class_type": "ImageBatch", "inputs": {"image1": ["frames01", 0], "image2": ["frames1", 0]}}
    prompt["batch010"] = {"class_type": "ImageBatch", "inputs": {"image1": ["batch01", 0], "image2": ["frames01", 0]}}
    prompt["mask3"] = {"class_type": "ImageToMask", "inputs": {"image": ["batch010", 0], "channel": "red"}}
    # a single mask: the left half editable
    prompt["left"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": SIZE * 4, "height": SIZE * 8}}
    prompt["half"] = {"class_type": "MaskComposite", "inputs": {"destination": ["frame_mask", 0], "source": ["left", 0],
                                                                "x": 0, "y": 0, "operation": "add"}}
    replay(prompt, "per_frame", positive="target", mask=["mask3", 0])
    replay(prompt, "left_half", positive="target", mask=["half", 0])
    out = run(prompt)
    x0, per_frame, half = out["latent"][0]["samples"], out["per_frame"][0]["samples"], out["left_half"][0]["samples"]
    assert per_frame.shape == half.shape == x0.shape == (2, 4, FRAMES, SIZE, SIZE)
    kept = max((per_frame[:, :, f] - x0[:, :, f]).abs().max().item() for f in (0, 2))
    edited = (per_frame[:, :, 1] - x0[:, :, 1]).abs().mean().item()
    outside = (half[..., SIZE // 2:] - x0[..., SIZE // 2:]).abs().max().item()
    inside = (half[..., : SIZE // 2] - x0[..., : SIZE // 2]).abs().mean().item()
    print(f"[video latents] per-frame mask: kept frames max diff {kept:.3g}, edited frame mean diff {edited:.3g}; "
          f"half mask: outside max diff {outside:.3g}, inside mean diff {inside:.3g}")
    assert kept < 1e-5 and outside < 1e-5          # measured 0 / 0
    assert edited > 1e-2 and inside > 1e-2          # measured 0.181 / 0.179


def test_the_report_reads_a_videos_frames():
    """A decoded video reaches the Inversion Report as one IMAGE item per frame: the report measures each frame
    (it stopped with "the inversion is of 1 image(s) but original has 3: the record belongs to another inversion")."""
    out = run(invert(base()))
    frames = torch.rand(FRAMES, SIZE * 8, SIZE * 8, 3, generator=torch.Generator().manual_seed(0))
    report = __import__("host").node_class("InversionReport")()
    with torch.inference_mode():
        result = report.report(frames, (frames + 0.01).clamp(0, 1), out["invert"][0])
    table = result["result"][0]
    assert table.count("| 39.") + table.count("| 40.") == FRAMES, table[:400]


def test_latent_layouts_the_pack_does_not_invert_are_errors_naming_the_latent():
    """A video latent on an image model, and an audio / 3-D shape model's 1-D latents (upstream's Stable Audio,
    Hunyuan3D formats declare latent_dimensions 1): errors naming the input, not a run on a wrong layout."""
    import pytest
    from types import SimpleNamespace

    check_latent = __import__("host").pack_module().nodes.bridge.check_latent

    def model(dims):
        return SimpleNamespace(model=SimpleNamespace(latent_format=SimpleNamespace(latent_dimensions=dims,
                                                                                   latent_channels=4)))

    with pytest.raises(ValueError, match=r"^latent: this model works on latents \[batch, channels, height, width\].*"
                                         r"a video latent does not fit an image model"):
        check_latent(model(2), {"samples": torch.zeros(1, 4, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"^latent: this model works on 1-D latents .*image and video latents only"):
        check_latent(model(1), {"samples": torch.zeros(1, 4, 32)})
    assert check_latent(model(3), {"samples": torch.zeros(1, 4, 8, 8)}).shape == (1, 4, 1, 8, 8)
