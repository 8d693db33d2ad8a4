#!/usr/bin/env python
"""What a wrong source_conditioning costs the Inversion Edit Engine, measured with the edit benchmark's own metrics.

    .venv/bin/python scripts/edit_source_prompt.py [--quick] [--model sd-unet-eps|sd3-mmdit-flow|all]

The engine's source branch evaluates source_conditioning at the stored trajectory x*_k; that trajectory belongs to
the prompt the image was inverted with. Here every held-out image is inverted as in scripts/benchmark_edits.py
(Exact Invert balanced, T=10, its own prompt, cfg 1) and edited through the engine (next word of the vocabulary, cfg
3) with source_conditioning =

* ``inversion's prompt``: what every shipped workflow wires (the same CLIPTextEncode to both);
* ``edit prompt``: the edit's CLIPTextEncode wired to the source as well (the likely wiring mistake);
* ``another prompt``: a third word of the vocabulary, neither the image's nor the edit's;
* ``empty prompt``.

Columns as in the edit benchmark (structure distance, edit score = the model's own classifier margin ×1000, its 9-way
accuracy, PSNR of the edit to the source image). Then the identity check: the edit prompt = the inversion's prompt at
the inversion's cfg 1, where the engine with the right source is the plain replay, i.e. the reconstruction (PSNR to
the source image and to the plain replay). Last, the inversion with the empty prompt and the image's description
as the source (a description after an empty-prompt inversion) against the empty prompt itself as the source.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

STEPS, CFG = 10, 3.0
SETTINGS = {
    "sd-unet-eps": (("pnp + features 0-0.3", dict(mode="pnp", window_start=0.0, window_end=0.3,
                                                   residual_features=True)),
                    ("masactrl 0-1", dict(mode="masactrl", window_start=0.0, window_end=1.0))),
    "sd3-mmdit-flow": (("dit_kv 0-0.85", dict(mode="dit_kv", window_start=0.0, window_end=0.85)),),
}


def run_model(name: str, quick: bool, pack, log) -> list[str]:
    import benchmark_edits as be

    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    edit = sys.modules[pack.__name__ + ".nodes.edit"]
    em = sys.modules[pack.__name__ + ".inversion_core.edit.metrics"]
    model, clip, vae = be.load_model(name, rm)
    vocab = list(rm.vocabulary())
    words = [p for p in vocab if p]
    images = rm.heldout_images()[:4 if quick else None]
    nxt = lambda p, k=1: words[(words.index(p) + k) % len(words)]  # noqa: E731
    own = [p for _, p, _ in images]
    target = [nxt(p) for p in own]
    sources = {"inversion's prompt": own, "edit prompt": target, "another prompt": [nxt(p, 2) for p in own],
               "empty prompt": [""] * len(own)}
    pixels = torch.cat([img for _, _, img in images])
    judge = be.Judge(model, clip, vocab, em)
    C = lambda prompts: be.conditioning(clip, prompts)  # noqa: E731
    empty = C([""] * len(own))
    idx = lambda prompts: torch.tensor([vocab.index(p) for p in prompts])  # noqa: E731
    lines = [f"\n## {name}: {len(own)} held-out images, Exact Invert balanced T={STEPS}, edit = the next word at cfg "
             f"{CFG:g}\n", "| setting | source_conditioning | structure | edit score | accuracy | PSNR to source |",
             "|---|---|---|---|---|---|"]
    with torch.inference_mode():
        latent = {"samples": vae.encode(pixels)}
        feats = judge.features(latent["samples"])
        schedule = bridge.schedule_from_inputs(model, STEPS, "simple" if judge.dit else "ddim_uniform", None)

        def invert(prompts):
            sampler = pack.NODE_CLASS_MAPPINGS["ExactInvert"]().sampler(model, preset="balanced", tolerance=1e-4,
                                                                          budget=3, memory=3)
            return bridge.run_inversion(model, C(prompts), empty, 1.0, latent, schedule, sampler)

        def judged(out, src_prompts, tgt_prompts):
            lat = out["samples"]
            dec = vae.decode(lat)
            errs = judge.classifier(lat)
            margin = 1000.0 * (errs.gather(1, idx(src_prompts)[:, None]) - errs.gather(1, idx(tgt_prompts)[:, None]))
            return {"structure": em.structure_distance(feats, judge.features(lat)).mean().item(),
                    "edit": margin.mean().item(), "acc": (errs.argmin(1) == idx(tgt_prompts)).float().mean().item(),
                    "psnr": em.psnr(dec, pixels).mean().item(), "dec": dec}

        inv = invert(own)
        plain = judged(bridge.run_replay(model, C(target), empty, CFG, inv), own, target)
        lines.append(f"| plain replay | — | {plain['structure']:.2f} | {plain['edit']:.2f} (100 %) | "
                     f"{plain['acc']:.2f} | {plain['psnr']:.2f} |")
        for label, spec in SETTINGS[name]:
            for source, prompts in sources.items():
                patched, _ = edit.build_engine_patch(model, inv, C(prompts), **spec)
                r = judged(bridge.run_replay(patched, C(target), empty, CFG, inv), own, target)
                lines.append(f"| {label} | {source} | {r['structure']:.2f} | {r['edit']:.2f} "
                             f"({100 * r['edit'] / plain['edit']:.0f} %) | {r['acc']:.2f} | {r['psnr']:.2f} |")
                log(lines[-1])
        # identity: the inversion's own prompt at its own cfg, where the engine with the right source changes nothing
        lines += ["", "Identity (edit prompt = the inversion's prompt, cfg 1): PSNR to the source image / to the "
                  "plain replay (dB)", "", "| setting | " + " | ".join(sources) + " |",
                  "|---|" + "---|" * len(sources)]
        recon = vae.decode(bridge.run_replay(model, C(own), empty, 1.0, inv)["samples"])
        lines.append(f"| plain replay | {em.psnr(recon, pixels).mean().item():.2f} | | | |")
        for label, spec in SETTINGS[name]:
            cells = []
            for source, prompts in sources.items():
                patched, _ = edit.build_engine_patch(model, inv, C(prompts), **spec)
                dec = vae.decode(bridge.run_replay(patched, C(own), empty, 1.0, inv)["samples"])
                cells.append(f"{em.psnr(dec, pixels).mean().item():.2f} / {em.psnr(dec, recon).mean().item():.2f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            log(lines[-1])
        # an empty-prompt inversion, edited with the empty prompt or the image's description as the source
        lines += ["", "Empty-prompt inversion, edit = the next word at cfg 3:", "",
                  "| setting | source_conditioning | structure | edit score | accuracy | PSNR to source |",
                  "|---|---|---|---|---|---|"]
        inv0 = invert([""] * len(own))
        plain0 = judged(bridge.run_replay(model, C(target), empty, CFG, inv0), own, target)
        lines.append(f"| plain replay | — | {plain0['structure']:.2f} | {plain0['edit']:.2f} (100 %) | "
                     f"{plain0['acc']:.2f} | {plain0['psnr']:.2f} |")
        for label, spec in SETTINGS[name]:
            for source, prompts in (("empty prompt (the inversion's)", [""] * len(own)), ("description", own),
                                    ("edit prompt", target), ("another prompt", sources["another prompt"])):
                patched, _ = edit.build_engine_patch(model, inv0, C(prompts), **spec)
                r = judged(bridge.run_replay(patched, C(target), empty, CFG, inv0), own, target)
                lines.append(f"| {label} | {source} | {r['structure']:.2f} | {r['edit']:.2f} "
                             f"({100 * r['edit'] / plain0['edit']:.0f} %) | {r['acc']:.2f} | {r['psnr']:.2f} |")
                log(lines[-1])
    return lines


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 images")
    ap.add_argument("--model", default="all", choices=tuple(SETTINGS) + ("all",))
    args = ap.parse_args(argv)
    import benchmark_edits

    pack, log = benchmark_edits.start_host()
    lines = []
    for name in (SETTINGS if args.model == "all" else (args.model,)):
        lines += run_model(name, args.quick, pack, log)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
