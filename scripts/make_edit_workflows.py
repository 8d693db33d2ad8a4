"""Write the Inversion Edit Engine's example workflows (workflows/reference_edit_engine_*.json, UI format).

    .venv/bin/python scripts/make_edit_workflows.py            # (re)write them
    .venv/bin/python scripts/make_edit_workflows.py --check    # exit 1 if a committed file differs

One workflow per engine mode on the pack's bundled reference model, runnable as dropped (the image comes from the
Load Inversion Reference Image node: nothing to copy). The builder (widget order, defaults, links) is
scripts/make_workflows.py's ``Workflow``; ``EDIT_WORKFLOWS`` has the same shape as its ``WORKFLOWS`` so the two can
be merged there. tests/test_edit_engine_workflows.py validates and executes every file.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_workflows import (REFERENCE_STEPS, Workflow, checkpoint_setup, decode_and_save, render,  # noqa: E402
                            write_or_check)

SETUP = ("Needs: nothing to download or copy. The model is the pack's bundled reference model (Load Inversion "
         "Reference Model: a tiny 32x32 pixel-space diffusion model; prompts: cat, astronaut, coffee, rocket, galaxy, "
         "bricks, grass, gravel, or empty) and the image one of its held-out images (Load Inversion Reference "
         "Image). The Edit Engine's MODEL output only replays this inverted latent: give the sampler the same "
         "latent, and (for masked edits) the same mask.")


def _base(wf: Workflow, image: str, source: str, target: str, reference_model: str = "sd-unet-eps"):
    loader = wf.add("InversionReferenceModelLoader", model=reference_model)
    model, clip, vae = loader["MODEL"], loader["CLIP"], loader["VAE"]
    pos = wf.add("CLIPTextEncode", "Source prompt", text=source, clip=clip)
    neg = wf.add("CLIPTextEncode", "Negative prompt (empty)", text="", clip=clip)
    edit = wf.add("CLIPTextEncode", "Edit prompt", text=target, clip=clip)
    img = wf.add("LoadInversionReferenceImage", "Held-out image", image=image)
    latent = wf.add("VAEEncode", pixels=img[0], vae=vae)
    inv = wf.add("ExactInvert", "Exact invert (source prompt)", model=model, positive=pos[0], negative=neg[0],
                 latent=latent[0], steps=REFERENCE_STEPS, scheduler="auto", cfg=1.0, denoise=1.0,
                 preset="balanced")
    return model, vae, pos[0], neg[0], edit[0], inv[0]


def _engine_workflow(defs, *, image: str, source: str, target: str, mode: str, widgets: dict, tag: str, note: str,
                     masked: bool = False, reference_model: str = "sd-unet-eps") -> dict:
    wf = Workflow(defs, "")
    model, vae, pos, neg, edit, inv = _base(wf, image, source, target, reference_model)
    plain = wf.add("InvertedLatentSampler", "Plain replay (edit prompt, no engine)", model=model, positive=edit,
                   negative=neg, cfg=3.0, inverted_latent=inv)
    decode_and_save(wf, plain[0], vae, "plain replay", "inversion/plain", save=False)
    mask = None
    if masked:
        blank = wf.add("SolidMask", "Mask canvas (0)", value=0.0, width=32, height=32)
        square = wf.add("SolidMask", "Edit region (1)", value=1.0, width=16, height=16)
        mask = wf.add("MaskComposite", "Centre square", destination=blank[0], source=square[0], x=8, y=8,
                      operation="add")[0]
    extra = {"mask": mask} if mask is not None else {}
    engine = wf.add("InversionEditEngine", f"Inversion Edit Engine ({mode})", model=model, inverted_latent=inv,
                    source_conditioning=pos, mode=mode, **widgets, **extra)
    ed = wf.add("InvertedLatentSampler", "Replay through the engine (edit prompt)", model=engine[0], positive=edit,
                negative=neg, cfg=3.0, inverted_latent=inv, **extra)
    decode_and_save(wf, ed[0], vae, f"engine {mode}", f"inversion/reference_edit_engine_{tag}")
    wf.note = note + "\n\n" + SETUP
    return wf.to_ui()


def reference_edit_engine_pnp(defs) -> dict:
    return _engine_workflow(
        defs, image="00_cat.png", source="cat", target="astronaut", mode="pnp", tag="pnp",
        widgets={"window_start": 0.0, "window_end": 0.3, "residual_features": True},
        note=("Structure-preserving edit, PnP mode: invert the image with its own prompt ('cat', Exact Invert, "
              f"{REFERENCE_STEPS} steps), then replay it with a new prompt ('astronaut', cfg 3) through the "
              "Inversion Edit Engine: a source branch pinned to the stored trajectory gives the edit its decoder "
              "features and self-attention maps over the first 30 % of the steps (features over 48 %). On this "
              "model that keeps the layout (structure distance about 40 % of plain replay's) while the edit "
              "prompt still wins the model's own classifier. The preview shows plain replay for comparison. "
              "Longer window = more structure, weaker edit."))


def reference_edit_engine_masactrl(defs) -> dict:
    return _engine_workflow(
        defs, image="03_rocket.png", source="rocket", target="galaxy", mode="masactrl", tag="masactrl",
        widgets={"window_start": 0.1, "window_end": 1.0},
        note=("MasaCtrl mode: invert ('rocket', Exact Invert, "
              f"{REFERENCE_STEPS} steps), replay with 'galaxy' at cfg 3 through the Inversion Edit Engine: from "
              "10 % of the schedule on, the edit's self-attention reads the source's keys and values (its "
              "texture and identity) in the decoder. A later start frees the layout more."))


def reference_edit_engine_p2p(defs) -> dict:
    return _engine_workflow(
        defs, image="05_bricks.png", source="bricks", target="gravel", mode="p2p", tag="p2p",
        widgets={"window_start": 0.0, "window_end": 0.8, "reweight": 1.5, "tokens": ""},
        note=("Prompt-to-Prompt mode: invert ('bricks'), replay with 'gravel' at cfg 3 through the Inversion "
              "Edit Engine: for 80 % of the steps the edit uses the source's cross-attention maps with the edit "
              "prompt's words (word swap), its cross-attention re-weighted by 1.5 (tokens empty = every token; "
              "with CLIP give positions like '2,3'), and the source's self-attention map for the first 40 %."))


def reference_edit_engine_masked(defs) -> dict:
    return _engine_workflow(
        defs, image="02_coffee.png", source="coffee", target="bricks", mode="masactrl", tag="masked",
        widgets={"window_start": 0.0, "window_end": 1.0}, masked=True,
        note=("Masked edit through the engine (KV-Edit style): invert ('coffee'), replay with 'bricks' at cfg 3 "
              "only inside a centre square (Solid Mask + Mask Composite). The same mask goes to the engine "
              "(outside it the self-attention keys/values are the source's) and to the Inverted Latent Sampler "
              "(outside it every step is pinned to the stored trajectory, so the background comes back exactly "
              "as the inversion stores it)."))


def reference_edit_engine_dit_kv(defs) -> dict:
    return _engine_workflow(
        defs, image="00_cat.png", source="cat", target="astronaut", mode="dit_kv", tag="dit_kv",
        reference_model="sd3-mmdit-flow", widgets={"window_start": 0.0, "window_end": 0.85},
        note=("DiT mode on the flow reference model (the host's SD3 MMDiT, rectified flow): invert ('cat', Exact "
              f"Invert, {REFERENCE_STEPS} steps, scheduler auto = simple up to sigma 1), replay with 'astronaut' at "
              "cfg 3 through the Inversion Edit Engine: over the first 85 % of the steps the image tokens of every "
              "joint block attend with the source's keys and values. Measured on this model: structure distance "
              "38 % of plain replay's at the same edit score. The preview shows plain replay for comparison."))


EDIT_WORKFLOWS = {
    "reference_edit_engine_pnp.json": reference_edit_engine_pnp,
    "reference_edit_engine_masactrl.json": reference_edit_engine_masactrl,
    "reference_edit_engine_p2p.json": reference_edit_engine_p2p,
    "reference_edit_engine_masked.json": reference_edit_engine_masked,
    "reference_edit_engine_dit_kv.json": reference_edit_engine_dit_kv,
}

def _checkpoint_engine(defs, *, ckpt: str, size: int, steps: int, scheduler: str, mode: str, widgets: dict,
                       cfg: float, tag: str, note: str, invert: tuple = ("ExactInvert", "Exact Invert",
                                                                        {"preset": "balanced"})) -> dict:
    wf = Workflow(defs, "")
    loader = wf.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    model, clip, vae = loader["MODEL"], loader["CLIP"], loader["VAE"]
    pos = wf.add("CLIPTextEncode", "Source prompt (describe your image)", text="a photo of a cat sitting on a sofa",
                 clip=clip)
    neg = wf.add("CLIPTextEncode", "Negative prompt (empty)", text="", clip=clip)
    edit = wf.add("CLIPTextEncode", "Edit prompt", text="a photo of a dog sitting on a sofa", clip=clip)
    img = wf.add("LoadImage", image="example.png")
    scaled = wf.add("ImageScale", "Upscale Image (model size)", image=img[0], upscale_method="lanczos", width=size,
                    height=size, crop="center")
    latent = wf.add("VAEEncode", pixels=scaled[0], vae=vae)
    node, title, method_widgets = invert
    inv = wf.add(node, title, model=model, positive=pos[0], negative=neg[0], latent=latent[0],
                 steps=steps, scheduler=scheduler, cfg=1.0, denoise=1.0, **method_widgets)
    engine = wf.add("InversionEditEngine", f"Inversion Edit Engine ({mode})", model=model, inverted_latent=inv[0],
                    source_conditioning=pos[0], mode=mode, **widgets)
    ed = wf.add("InvertedLatentSampler", "Replay through the engine (edit prompt)", model=engine[0],
                positive=edit[0], negative=neg[0], cfg=cfg, inverted_latent=inv[0])
    decode_and_save(wf, ed[0], vae, f"engine {mode}", f"inversion/{tag}_edit_engine")
    wf.note = note + "\n\n" + checkpoint_setup(ckpt, size)
    return wf.to_ui()


def sd15_edit_engine_pnp(defs) -> dict:
    return _checkpoint_engine(
        defs, ckpt="v1-5-pruned-emaonly.safetensors", size=512, steps=50, scheduler="auto", mode="pnp",
        widgets={"window_start": -1.0, "window_end": -1.0, "residual_features": True}, cfg=7.5, tag="sd15",
        note=("Stable Diffusion 1.5, PnP through the Inversion Edit Engine: Exact inversion (50 steps, cfg 1), then "
              "the edit prompt at cfg 7.5 with the source branch's decoder features and self-attention maps (SD1.x "
              "preset: layers output.4-11, window 0-0.5, features 0-0.8). Write a source prompt that describes "
              "your image."))


def sdxl_edit_engine_masactrl(defs) -> dict:
    return _checkpoint_engine(
        defs, ckpt="sd_xl_base_1.0.safetensors", size=1024, steps=50, scheduler="karras", mode="masactrl",
        widgets={"window_start": -1.0, "window_end": -1.0}, cfg=5.0, tag="sdxl",
        note=("SDXL base, MasaCtrl through the Inversion Edit Engine: Exact inversion (50 steps, cfg 1), then the "
              "edit prompt at cfg 5 reading the source's self-attention keys/values (SDXL preset: output.0-2, from "
              "8 % of the schedule on). Write a source prompt that describes your image."))


def sd3_edit_engine_kv(defs) -> dict:
    return _checkpoint_engine(
        defs, ckpt="sd3_medium_incl_clips.safetensors", size=1024, steps=28, scheduler="simple", mode="dit_kv",
        widgets={"window_start": 0.0, "window_end": 0.5}, cfg=4.0, tag="sd3",
        note=("SD3 medium, key/value injection in the image tokens of every MMDiT joint block over the first half "
              "of the schedule (Inversion Edit Engine, dit_kv). The same node patches Flux on upstream ComfyUI "
              "(flux_schnell_edit_engine_kv.json)."))


def flux_schnell_edit_engine_kv(defs) -> dict:
    return _checkpoint_engine(
        defs, ckpt="flux1-schnell-fp8.safetensors", size=1024, steps=4, scheduler="simple", mode="dit_kv",
        widgets={"window_start": 0.0, "window_end": 0.5}, cfg=1.0, tag="flux_schnell",
        invert=("GNRIInvert", "GNRI Invert", {}),
        note=("Flux.1-schnell (the all-in-one fp8 checkpoint that Load Checkpoint reads), GNRI inversion in 4 steps "
              "(the few-step setting GNRI is made for), then the edit prompt at cfg 1 (schnell is guidance-"
              "distilled: the negative prompt is unused) with the source's keys and values in the image tokens of "
              "every double and single block over the first half of the schedule (Inversion Edit Engine, dit_kv). "
              "Needs a ComfyUI with Flux (upstream ComfyUI has it; the engine reaches Flux through the host's DiT "
              "block-replace and attention-override hooks and says so clearly on a host without them)."))


# checkpoint workflows: written and validated (tests/test_edit_engine_workflows.py, tests/test_workflows.py); executed
# only where the checkpoint exists
CHECKPOINT_EDIT_WORKFLOWS = {
    "sd15_edit_engine_pnp.json": sd15_edit_engine_pnp,
    "sdxl_edit_engine_masactrl.json": sdxl_edit_engine_masactrl,
    "sd3_edit_engine_kv.json": sd3_edit_engine_kv,
    "flux_schnell_edit_engine_kv.json": flux_schnell_edit_engine_kv,
}

def build_all(defs) -> dict:
    return {name: make(defs) for name, make in {**EDIT_WORKFLOWS, **CHECKPOINT_EDIT_WORKFLOWS}.items()}


def main(argv=None) -> int:
    return write_or_check(build_all, "make_edit_workflows.py", argv)


if __name__ == "__main__":
    sys.exit(main())
