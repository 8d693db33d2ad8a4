#!/usr/bin/env python
"""BDIA's gamma against the step count: how the (1/gamma)^T growth of its inversion shows in edits.

    .venv/bin/python scripts/bdia_gamma_steps.py [--images 3] [--steps 4,10,20,50] [--gammas 0.5,0.7,...]

On each shipped reference model (the nodes' default scheduler "auto", the image's own label as the source prompt,
cfg 1 for inversion), for every T and gamma (and "auto" = the node's default rule, where it differs from the listed
values), through the real nodes (BDIA Invert / Exact Invert -> the Inverted Latent Sampler's code path):
* round trip: PSNR of BDIA's own replay to the original image;
* noise scale: the inverted latent's RMS / a noisy latent's RMS at sigma_max (what the pack warns above 10x);
* edit: replay with the next label of the vocabulary at cfg 3; PSNR of BDIA's edit to Exact Invert's (default
  inputs, same T) edit of the same image, and to the original;
* generation: from one shared noise per image, the image's label at cfg 3: PSNR of BDIA's sampler (first step plain,
  then BDIA) to the plain DDIM/Euler sampler's image.
Per cell: the mean over the images. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

EDIT_CFG = 3.0


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", default="4,10,20,50")
    ap.add_argument("--gammas", default="0.5,0.7,0.8,0.9,0.95,1.0")
    ap.add_argument("--models", default=None, help="comma-separated reference model names (default: all shipped)")
    ap.add_argument("--no-generation", action="store_true")
    args = ap.parse_args(argv)
    steps_list = [int(s) for s in args.steps.split(",")]
    gammas = [float(g) for g in args.gammas.split(",")]

    import host
    from benchmark import encode, node_params, reference

    host.engine()
    pack = host.pack_module()
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    metrics = sys.modules[pack.__name__ + ".inversion_core.metrics"]
    record = sys.modules[pack.__name__ + ".inversion_core.record"]
    bdia_core = sys.modules[pack.__name__ + ".inversion_core.solvers.bdia"]
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    auto_gamma = getattr(bdia_core, "auto_gamma", lambda steps: max(0.7, 0.7 ** (10.0 / steps)))
    names = [n for n in rm.reference_model_names() if rm.reference_model_path(n).is_file()]
    if args.models:
        names = [n for n in names if n in args.models.split(",")]
    bdia_defaults = node_params(pack, "BDIAInvert", {})
    rows = []
    for name in names:
        model, clip, vae, _ = reference(torch.float32, False, name)
        kind = sys.modules[pack.__name__ + ".nodes.host_compat"].model_kind(model.get_model_object("model_sampling"))
        vocab = [p for p in rm.vocabulary() if p]
        images = rm.heldout_images()[:args.images]
        for steps in steps_list:
            start = time.perf_counter()
            schedule = bridge.schedule_from_inputs(model, steps, "auto", None)
            cells = [(f"{g:g}", g) for g in gammas]
            ga = auto_gamma(steps)
            if all(abs(ga - g) > 1e-9 for g in gammas):
                cells.append((f"auto {ga:.3f}", ga))
            else:
                cells = [(lab + (" = auto" if abs(g - ga) <= 1e-9 else ""), g) for lab, g in cells]
            acc: dict = {}
            for idx, (_, prompt, img) in enumerate(images):
                edit_prompt = vocab[(vocab.index(prompt) + 1) % len(vocab)]
                src, edit, empty = encode(clip, prompt), encode(clip, edit_prompt), encode(clip, "")
                with torch.inference_mode():
                    latent = {"samples": vae.encode(img)}

                    def invert(node, params):
                        sampler = pack.NODE_CLASS_MAPPINGS[node]().sampler(model, **node_params(pack, node, params))
                        return bridge.run_inversion(model, src, empty, 1.0, latent, schedule, sampler)

                    def figures(inv, reference_edit=None):
                        """(the edit, (round trip dB, noise scale, edit dB to reference_edit, edit dB to image))"""
                        states = inv["inversion"]["states"]
                        recon = vae.decode(bridge.run_replay(model, src, empty, 1.0, inv)["samples"])
                        edited = vae.decode(bridge.run_replay(model, edit, empty, EDIT_CFG, inv)["samples"])
                        to_ref = float("inf") if reference_edit is None else metrics.psnr(reference_edit, edited)[0]
                        return edited, (metrics.psnr(img, recon)[0],
                                        record.noise_scale(states[0], states[-1], float(schedule[0]), kind),
                                        to_ref, metrics.psnr(img, edited)[0])

                    exact_edit, row = figures(invert("ExactInvert", {}))
                    acc.setdefault("Exact balanced (ref.)", []).append(row + (float("nan"),))
                    acc.setdefault("DDIM (ref.)", []).append(
                        figures(invert("DDIMInvert", {}), exact_edit)[1] + (float("nan"),))
                    if not args.no_generation:
                        g = torch.Generator().manual_seed(idx)
                        noise = model.model.process_latent_out(
                            torch.randn(latent["samples"].shape, generator=g) * schedule[0])
                        plain_gen = vae.decode(bridge._guide(model, src, empty, EDIT_CFG, noise,
                                                             bridge.ReplaySampler(checked=True), schedule))
                    for label, gamma in cells:
                        inv = invert("BDIAInvert", {"gamma": gamma})
                        _, row = figures(inv, exact_edit)
                        gen_db = float("nan")
                        if not args.no_generation:
                            sampler = bridge.ReplaySampler(checked=True,
                                                           bdia=(None, gamma, None, bdia_defaults["space"], None))
                            gen = vae.decode(bridge._guide(model, src, empty, EDIT_CFG, noise, sampler, schedule))
                            gen_db = metrics.psnr(plain_gen, gen)[0] if torch.isfinite(gen).all() else float("nan")
                        acc.setdefault(label, []).append(row + (gen_db,))
            for label, vals in acc.items():
                n = len(vals)
                mean = [sum(v[j] for v in vals) / n for j in range(5)]
                worst_scale = max(v[1] for v in vals)
                rows.append((name, steps, label, mean[0], worst_scale, mean[2], mean[3], mean[4]))
            print(f"[{name}] T={steps}: {time.perf_counter() - start:.0f} s", flush=True)
    lines = ["| model | T | gamma | round trip dB | noise scale (max) | edit dB to Exact's edit | edit dB to original "
             "| generation dB to DDIM's |", "|---|---|---|---|---|---|---|---|"]
    for name, steps, label, rt, sc, e_ex, e_or, gen in rows:
        lines.append(f"| {name} | {steps} | {label} | {min(rt, 200):.1f} | {sc:.3g} | {e_ex:.1f} | {e_or:.1f} | "
                     f"{gen:.1f} |")
    print("\n".join(lines))
    print(f"\n{args.images} held-out images per cell; scheduler auto; edit = next vocabulary label at cfg {EDIT_CFG:g}")
    return rows


if __name__ == "__main__":
    main()
