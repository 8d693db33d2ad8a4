#!/usr/bin/env python
"""BDIA against plain DDIM replay, side by side: reconstruction, edits, generation, and gamma's trade-off.

    .venv/bin/python scripts/bdia_compare.py            # docs/bdia_compare.png, docs/bdia_gamma.png + tables

For a few held-out images of each shipped reference model (T = 10, karras, the image's own label as the source
prompt, cfg 1 for inversion):
* bdia_compare.png — per image: the original; the reconstruction by DDIM Invert + replay and by BDIA Invert + its
  replay; an edit (replay with the next label of the vocabulary at cfg 3) from DDIM, Exact balanced and BDIA; and a
  generation from one shared noise with the image's label at cfg 3 by the plain DDIM/Euler sampler and by BDIA's
  sampler (its first step plain, then BDIA steps with gamma 1).
* bdia_gamma.png — BDIA with gamma 1 / 0.9 / 0.7 / 0.5: the edit of each, and the generation of each.
Printed: per model and gamma, the round-trip PSNR, the inverted noise's distance to Exact exact's (how close to the
sampling ODE's own inverse it is), the PSNR of a plain Euler replay of `samples` alone (what another sampler makes of
it), and the edits' PSNR to the original.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

GAMMAS = (1.0, 0.9, 0.7, 0.5)
STEPS, EDIT_CFG = 10, 3.0
SPACE = os.environ.get("BDIA_SPACE", "vp")


def main(images: int = 3, docs: Path = ROOT / "docs") -> None:
    import host
    from benchmark import encode, node_params, reference
    from demo import _grid

    host.engine()
    pack = host.pack_module()
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    metrics = sys.modules[pack.__name__ + ".inversion_core.metrics"]
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    names = [n for n in rm.reference_model_names() if rm.reference_model_path(n).is_file()]
    rows, gamma_rows, lines = [], [], []
    lines += ["| model | method | round trip dB | xT vs Exact exact (rel.) | plain Euler from samples dB | "
              "edit dB to original |", "|---|---|---|---|---|---|"]
    for name in names:
        model, clip, vae, _ = reference(torch.float32, False, name)
        vocab = [p for p in rm.vocabulary() if p]
        stats: dict = {}

        def invert(node, params, latent, src, empty):
            schedule = bridge.schedule_from_inputs(model, STEPS, "karras", None)
            sampler = pack.NODE_CLASS_MAPPINGS[node]().sampler(model, **node_params(pack, node, params))
            return bridge.run_inversion(model, src, empty, 1.0, latent, schedule, sampler)

        def decode(latent):
            return vae.decode(latent["samples"])

        for idx, (img_name, prompt, img) in enumerate(rm.heldout_images()[:images]):
            edit_prompt = vocab[(vocab.index(prompt) + 1) % len(vocab)]
            src, edit, empty = encode(clip, prompt), encode(clip, edit_prompt), encode(clip, "")
            with torch.inference_mode():
                latent = {"samples": vae.encode(img)}
                ref = invert("ExactInvert", {"preset": "custom", "tolerance": 1e-6, "budget": 40, "memory": 5}, latent, src,
                             empty)["inversion"]["states"][-1]
                runs = [("DDIM", "DDIMInvert", {}), ("Exact balanced", "ExactInvert", {})] + [
                    (f"BDIA g{g}", "BDIAInvert", {"gamma": g, "space": SPACE}) for g in GAMMAS]
                out = {}
                for label, node, params in runs:
                    inv = invert(node, params, latent, src, empty)
                    recon = decode(bridge.run_replay(model, src, empty, 1.0, inv))
                    edited = decode(bridge.run_replay(model, edit, empty, EDIT_CFG, inv))
                    plain = dict(inv, inversion=dict(inv["inversion"], method="plain (test)"))
                    euler = decode(bridge.run_replay(model, src, empty, 1.0, plain)) if label.startswith("BDIA") \
                        else recon
                    top = inv["inversion"]["states"][-1]
                    s = stats.setdefault(label, [])
                    s.append((metrics.psnr(img, recon)[0], float((top - ref).norm() / ref.norm()),
                              metrics.psnr(img, euler)[0], metrics.psnr(img, edited)[0]))
                    out[label] = (recon, edited)
                # generation from one noise: the plain sampler vs BDIA's (first step plain, then BDIA)
                schedule = bridge.schedule_from_inputs(model, STEPS, "karras", None)
                g = torch.Generator().manual_seed(idx)
                noise = model.model.process_latent_out(torch.randn(latent["samples"].shape, generator=g) * schedule[0])
                gens = {}
                for label, bdia in [("DDIM", None)] + [(f"BDIA g{g_}", (None, g_, None, SPACE)) for g_ in GAMMAS]:
                    sampler = bridge.ReplaySampler(checked=True, bdia=bdia)
                    gens[label] = vae.decode(bridge._guide(model, src, empty, EDIT_CFG, noise, sampler, schedule))
            rows.append([img, out["DDIM"][0], out["BDIA g1.0"][0], out["DDIM"][1], out["Exact balanced"][1],
                         out["BDIA g1.0"][1], gens["DDIM"], gens["BDIA g1.0"]])
            gamma_rows.append([img] + [out[f"BDIA g{g_}"][1] for g_ in GAMMAS] + [gens[f"BDIA g{g_}"] for g_ in GAMMAS])
            print(f"[{name}] {img_name}: edit '{prompt}' -> '{edit_prompt}'", flush=True)
        for label, vals in stats.items():
            n = len(vals)
            mean = [sum(v[j] for v in vals) / n for j in range(4)]
            lines.append(f"| {name} | {label} | {mean[0]:.2f} | {mean[1]:.3f} | {mean[2]:.2f} | {mean[3]:.2f} |")
    docs.mkdir(parents=True, exist_ok=True)
    _grid(rows, ["original", "DDIM rec", "BDIA rec", "DDIM edit", "Exact edit", "BDIA edit", "DDIM gen", "BDIA gen"],
          docs / "bdia_compare.png")
    _grid(gamma_rows, ["original"] + [f"edit g{g}" for g in GAMMAS] + [f"gen g{g}" for g in GAMMAS],
          docs / "bdia_gamma.png")
    print("\n".join(lines))
    print(f"\nrows: {', '.join(names)} x {images} images; written: {docs / 'bdia_compare.png'}, "
          f"{docs / 'bdia_gamma.png'}")


if __name__ == "__main__":
    main()
