#!/usr/bin/env python
"""Source correction with a new prompt: edit strength against faithfulness, measured and drawn.

    .venv/bin/python scripts/correction_tradeoff.py        # writes docs/correction_tradeoff.png, prints PSNR

For a few held-out images of the reference model: Exact Invert (balanced, 10 steps, source prompt = the image's label,
cfg 1), then the Inverted Latent Sampler's code path with the next label as the edit prompt at cfg 3 and source
correction strength 0 … 1. Rows: images; columns: original, then one edit per strength; the printed table gives each
edit's PSNR to the original (higher = closer to the source).
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

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(images: int = 4, out: Path = ROOT / "docs" / "correction_tradeoff.png") -> None:
    import host
    from benchmark import encode
    from demo import _grid

    host.engine()
    pack = host.pack_module()
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    bridge = sys.modules[pack.__name__ + ".nodes.bridge"]
    metrics = sys.modules[pack.__name__ + ".inversion_core.metrics"]
    model, clip, vae = rm.load_reference_model()
    vocab = [p for p in rm.vocabulary() if p]
    rows, table = [], ["| image | edit prompt | " + " | ".join(f"strength {s}" for s in STRENGTHS) + " |",
                       "|---|---|" + "---|" * len(STRENGTHS)]
    for name, prompt, img in rm.heldout_images()[:images]:
        edit_prompt = vocab[(vocab.index(prompt) + 1) % len(vocab)]
        src, edit, empty = encode(clip, prompt), encode(clip, edit_prompt), encode(clip, "")
        with torch.inference_mode():
            latent = {"samples": vae.encode(img)}
            schedule = bridge.schedule_from_inputs(model, 10, "ddim_uniform", None)
            sampler = pack.NODE_CLASS_MAPPINGS["ExactInvert"]().sampler(
                model, preset="balanced", tolerance=1e-4, budget=3, memory=3)
            inv = bridge.run_inversion(model, src, empty, 1.0, latent, schedule, sampler)
            row, scores = [img], []
            for s in STRENGTHS:
                out_latent = bridge.run_replay(model, edit, empty, 3.0, inv, source_positive=src,
                                               correction_strength=s)
                decoded = vae.decode(out_latent["samples"])
                row.append(decoded)
                scores.append(metrics.psnr(img, decoded)[0])
        rows.append(row)
        table.append(f"| {name} | {edit_prompt} | " + " | ".join(f"{v:.2f}" for v in scores) + " |")
    _grid(rows, ["original", *(f"strength {s}" for s in STRENGTHS)], out)
    print("\n".join(table))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
