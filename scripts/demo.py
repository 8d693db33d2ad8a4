#!/usr/bin/env python
"""The main job: the demo workflows on the bundled reference model, headless, through the real ComfyUI executor.

    bash scripts/demo.sh                 # every held-out image
    bash scripts/demo.sh --images 2      # the first two (what the tests run)

For each held-out image it runs ``workflows/reference_reconstruct_all_methods.json`` (every inversion method →
Inverted Latent Sampler → VAEDecode) and ``workflows/reference_edit.json`` (Exact Invert → replay with another prompt,
with source correction), with the image's own prompt as the source prompt. It writes to --out (default out/demo/):
the reconstructions and edits as PNG, ``demo.png`` (rows: images; columns: original | reconstruction per method |
edit) and ``results.md`` (PSNR, SSIM, model evaluations and seconds per method, averaged over the images), and prints
the table. Progress comes from the host's progress reporting.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))          # the harness that starts the real engine with the pack loaded

import torch  # noqa: E402

ALL_METHODS = ROOT / "workflows" / "reference_reconstruct_all_methods.json"
EDIT = ROOT / "workflows" / "reference_edit.json"
SCALE = 4                                         # 32 px images are shown 4x (nearest) in demo.png


def _titled(ui: dict, title: str) -> dict:
    nodes = [n for n in ui["nodes"] if n.get("title") == title]
    if len(nodes) != 1:
        raise KeyError(f"{len(nodes)} nodes titled {title!r} in the workflow")
    return nodes[0]


def _prepare(ui: dict, image_file: str, source_prompt: str, edit_prompt: str | None = None) -> dict:
    """The workflow with its image and prompts set (the files' own defaults are one held-out cat)."""
    ui = json.loads(json.dumps(ui))
    _titled(ui, "Load held-out image")["widgets_values"][0] = image_file    # LoadImage or the pack's loader
    _titled(ui, "Source prompt")["widgets_values"][0] = source_prompt
    if edit_prompt is not None:
        _titled(ui, "Edit prompt")["widgets_values"][0] = edit_prompt
    return ui


def _progress_printer(ui: dict):
    titles = {str(n["id"]): n.get("title") or n["type"] for n in ui["nodes"]}

    def on_event(event, data):
        if event == "progress" and data.get("value") == data.get("max"):
            print(f"    {titles.get(str(data.get('node')), data.get('node'))}: {data['value']}/{data['max']} steps",
                  flush=True)

    return on_event


def _save(img: torch.Tensor, path: Path, scale: int = 1) -> None:
    from PIL import Image

    arr = (img[0].clamp(0, 1).numpy() * 255).round().astype("uint8")
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)


def _grid(rows: list[list[torch.Tensor]], labels: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    cell, pad, head = 32 * SCALE, 6, 22
    w = len(labels) * (cell + pad) + pad
    h = head + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        draw.text((pad + j * (cell + pad), 5), label, fill="black")
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            arr = (img[0].clamp(0, 1).numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (pad + j * (cell + pad), head + pad + i * (cell + pad)))
    canvas.save(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    ap.add_argument("--out", default=str(ROOT / "out" / "demo"))
    args = ap.parse_args(argv)

    import host
    from workflow_format import ui_to_api

    start_all = time.perf_counter()
    host.engine()
    defs = host.engine().nodes.NODE_CLASS_MAPPINGS
    pack = host.pack_module()
    rm = sys.modules[pack.__name__ + ".nodes.reference_model"]
    metrics = sys.modules[pack.__name__ + ".inversion_core.metrics"]
    from comfy.cmd import folder_paths

    heldout_dir = Path(rm.REFERENCE_DIR) / rm.HELDOUT_DIR_NAME
    index = json.loads((heldout_dir / rm.HELDOUT_INDEX_NAME).read_text())["images"]
    if args.images:
        index = index[: args.images]
    input_dir = Path(folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    vocab = [p for p in rm.vocabulary() if p]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    all_ui = json.loads(ALL_METHODS.read_text())
    edit_ui = json.loads(EDIT.read_text())
    tags = [n["title"][: -len(" invert")] for n in all_ui["nodes"] if (n.get("title") or "").endswith(" invert")]
    per_method: dict[str, list[dict]] = {t: [] for t in tags}
    grid_rows, edit_prompts = [], []
    pixels = {name: img for name, _, img in rm.heldout_images(heldout_dir)}
    for item in index:
        file, prompt = item["file"], item["prompt"]
        shutil.copy(heldout_dir / file, input_dir / Path(file).name)
        edit_prompt = vocab[(vocab.index(prompt) + 1) % len(vocab)] if prompt in vocab else vocab[0]
        edit_prompts.append(edit_prompt)
        print(f"{Path(file).stem}: source prompt {prompt!r}, edit prompt {edit_prompt!r}", flush=True)
        ui = _prepare(all_ui, Path(file).name, prompt)
        out = host.run_workflow(ui_to_api(ui, defs), on_event=_progress_printer(ui))
        original = out[str(_titled(ui, "Load held-out image")["id"])][0]
        if not torch.allclose(original, pixels[Path(file).stem], atol=1 / 255):
            raise RuntimeError(f"{ALL_METHODS.name} loaded another image than {file}: the demo would mislabel it")
        row = [original]
        stem = Path(file).stem
        _save(original, out_dir / f"{stem}_original.png")
        for tag in tags:
            recon = out[str(_titled(ui, f"Decode ({tag})")["id"])][0]
            stats = out[str(_titled(ui, f"{tag} invert")["id"])][0]["inversion"]["stats"]
            per_method[tag].append({"psnr": metrics.psnr(original, recon)[0], "ssim": metrics.ssim(original, recon)[0],
                                    "fwd": stats["forward_evals"], "bwd": stats["backward_evals"],
                                    "seconds": stats["seconds"]})
            _save(recon, out_dir / f"{stem}_{tag.lower().replace(' ', '_')}.png")
            row.append(recon)
        ui = _prepare(edit_ui, Path(file).name, prompt, edit_prompt)
        out = host.run_workflow(ui_to_api(ui, defs), on_event=_progress_printer(ui))
        edit = out[str(_titled(ui, "Decode (edit)")["id"])][0]
        _save(edit, out_dir / f"{stem}_edit_{edit_prompt}.png")
        row.append(edit)
        grid_rows.append(row)

    _grid(grid_rows, ["original", *tags, "edit (Exact)"], out_dir / "demo.png")
    lines = ["| method | PSNR dB | SSIM | model evals (fwd / bwd) | seconds |", "|---|---|---|---|---|"]
    summary = {}
    for tag, rows in per_method.items():
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        summary[tag] = mean
        lines.append(f"| {tag} | {mean['psnr']:.2f} | {mean['ssim']:.4f} | {mean['fwd']:.1f} / {mean['bwd']:.1f} | "
                     f"{mean['seconds']:.2f} |")
    note = (f"\n{len(index)} held-out 32x32 images of the reference model, the settings of "
            f"{ALL_METHODS.relative_to(ROOT)} (source prompt = the image's label); the edit column is "
            f"{EDIT.relative_to(ROOT)} with the next label as the edit prompt. Total "
            f"{time.perf_counter() - start_all:.0f} s.")
    table = "\n".join(lines) + "\n" + note
    (out_dir / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\noutputs: {out_dir}/ (demo.png, results.md, per-image PNGs)")
    return summary


if __name__ == "__main__":
    main()
