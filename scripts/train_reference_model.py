#!/usr/bin/env python
"""Train the pack's tiny reference diffusion model and write its evidence (weights, held-out images, report, samples).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_reference_model.py            # train + evaluate (~35 min, 1 core)
    .venv/bin/python scripts/train_reference_model.py --eval-only                # re-evaluate the shipped weights
    .venv/bin/python scripts/train_reference_model.py --bench 10                 # time 10 steps, write nothing

Model: the host's SD UNet (``reference_unet_config()`` in ``nodes/reference_model.py``), 32x32 RGB pixel space
(latent = 2 * image - 1), epsilon prediction, SD1.x noise schedule (taken from the host's ``ModelSamplingDiscrete``),
cross-attention on a learned prompt embedding table (vocabulary below; "" is the unconditional prompt, used for
classifier-free dropout). Data: images that ship inside scikit-image (no network), random square crops (30..100% of
the short side) resized to 32x32 with antialiasing, random horizontal flips. The right 30% of every source image is
never sampled in training; the held-out images are crops from that strip.

Deterministic: fixed seed and a fixed number of steps (not wall time). Output: ``models/reference/``
(``reference_model.safetensors`` fp16 with metadata, ``heldout/``, ``training_report.json``, ``samples.png``).
Training-only changes to the host modules (taken back before evaluation, never shipped): the SDPA attention kernel
instead of the fork's CPU default (sub-quadratic) for speed, and an out-of-place copy of ``BasicTransformerBlock``'s
forward (the host's adds in place, which autograd cannot differentiate through). Both compute the same function; the
script checks that before training.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# prompt -> skimage.data function (all ship inside the scikit-image package: no pooch / network)
SOURCES = [
    ("cat", "chelsea"),
    ("astronaut", "astronaut"),
    ("coffee", "coffee"),
    ("rocket", "rocket"),
    ("galaxy", "hubble_deep_field"),
    ("bricks", "brick"),
    ("grass", "grass"),
    ("gravel", "gravel"),
]
VOCABULARY = [""] + [p for p, _ in SOURCES]
HELDOUT_FRACTION = 0.3  # right strip of every source image, never seen in training
MIN_CROP = 0.3  # crop side range, fraction of the training region's short side
TOKENS = 4
CONTEXT_DIM = 64
MODEL_CHANNELS = 32

DEFAULTS = dict(steps=1700, batch=32, seed=20251123, lr=8e-4, warmup=100, final_lr_frac=0.1, ema=0.998,
                cfg_dropout=0.15, grad_clip=1.0)


def load_refmod():
    spec = importlib.util.spec_from_file_location("inversion_reference_model", ROOT / "nodes" / "reference_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------------------- data

def load_sources():
    import skimage.data

    out = []
    for prompt, fn in SOURCES:
        arr = getattr(skimage.data, fn)()
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        img = torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
        h, w = img.shape[1:]
        w_train = int(math.floor(w * (1.0 - HELDOUT_FRACTION)))
        out.append({"prompt": prompt, "source": f"skimage.data.{fn}()", "image": img, "h": h, "w": w,
                    "w_train": w_train})
    return out


def resize32(crop: torch.Tensor) -> torch.Tensor:
    return F.interpolate(crop[None], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]


def random_crop(src: dict, g: torch.Generator) -> torch.Tensor:
    m = min(src["h"], src["w_train"])
    u = torch.rand((), generator=g).item()
    side = int(round(math.exp(math.log(MIN_CROP * m) + u * (math.log(m) - math.log(MIN_CROP * m)))))
    side = max(32, min(side, m))
    y0 = int(torch.randint(0, src["h"] - side + 1, (), generator=g))
    x0 = int(torch.randint(0, src["w_train"] - side + 1, (), generator=g))  # never reaches the held-out strip
    img = resize32(src["image"][:, y0:y0 + side, x0:x0 + side])
    if torch.rand((), generator=g).item() < 0.5:
        img = img.flip(-1)
    return img


def batch(sources, n: int, g: torch.Generator):
    labels = torch.randint(1, len(VOCABULARY), (n,), generator=g)
    imgs = torch.stack([random_crop(sources[int(k) - 1], g) for k in labels])
    return imgs, labels


def write_heldout(sources, directory: Path):
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    items = []
    for i, src in enumerate(sources):
        side = min(src["w"] - src["w_train"], src["h"])
        x0 = src["w_train"]
        y0 = (src["h"] - side) // 2
        img = resize32(src["image"][:, y0:y0 + side, x0:x0 + side]).clamp(0, 1)
        arr = (img.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        name = f"{i:02d}_{src['prompt']}.png"
        Image.fromarray(arr).save(directory / name)
        items.append({"file": name, "prompt": src["prompt"], "source": src["source"],
                      "box_xywh": [x0, y0, side, side]})
    index = {"note": "32x32 crops (antialiased resize) from the right {:.0%} strip of each source image; training "
                     "crops never touch that strip.".format(HELDOUT_FRACTION), "images": items}
    (directory / "heldout.json").write_text(json.dumps(index, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------- model

@contextlib.contextmanager
def training_attention():
    """SDPA attention + out-of-place transformer blocks, for training only (restored afterwards)."""
    import comfy.ldm.modules.attention as attn

    saved = (attn.optimized_attention, attn.optimized_attention_masked)
    attn.optimized_attention = attn.attention_pytorch
    attn.optimized_attention_masked = attn.attention_pytorch
    try:
        yield
    finally:
        attn.optimized_attention, attn.optimized_attention_masked = saved


def _block_forward(self, x, context=None, transformer_options={}):
    # BasicTransformerBlock._forward without patches, adds out of place (no ff_in, is_res = True in this UNet)
    x = x + self.attn1(self.norm1(x), context=context if self.disable_self_attn else None)
    x = x + self.attn2(self.norm2(x), context=context)
    return x + self.ff(self.norm3(x))


def make_trainable(unet):
    from comfy.ldm.modules.attention import BasicTransformerBlock

    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    for m in blocks:
        assert not m.ff_in and m.is_res and m.attn2 is not None and not m.switch_temporal_ca_to_sa
        m.forward = types.MethodType(_block_forward, m)
    return blocks


def restore_blocks(blocks):
    for m in blocks:
        del m.forward


def sd1_alphas_cumprod(refmod):
    from comfy.model_sampling import ModelSamplingDiscrete

    ms = ModelSamplingDiscrete(types.SimpleNamespace(sampling_settings=refmod.SD1_SAMPLING_SETTINGS))
    return 1.0 / (1.0 + ms.sigmas.double() ** 2)


# ---------------------------------------------------------------------------------------------------------- train

def train(args, refmod, sources, log):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = refmod.reference_unet_config(MODEL_CHANNELS, CONTEXT_DIM)
    torch.manual_seed(args.seed)
    unet = UNetModel(**cfg, dtype=torch.float32, operations=refmod._InitOps.get())
    emb = torch.nn.Parameter(torch.randn(len(VOCABULARY), TOKENS, CONTEXT_DIM))
    n_params = sum(p.numel() for p in unet.parameters()) + emb.numel()

    # the training-only forward computes the host's function: check on a random batch first
    g = torch.Generator().manual_seed(args.seed)
    xt = torch.randn(4, 3, 32, 32, generator=g)
    tt = torch.tensor([10.0, 300.0, 600.0, 990.0])
    with torch.no_grad():
        ref = unet(xt, tt, context=emb[:4])
        with training_attention():
            blocks = make_trainable(unet)
            got = unet(xt, tt, context=emb[:4])
            restore_blocks(blocks)
    assert torch.allclose(ref, got, atol=1e-5, rtol=1e-4), (ref - got).abs().max()

    abar = sd1_alphas_cumprod(refmod).float()
    params = list(unet.parameters()) + [emb]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema = [p.detach().clone() for p in params]

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        q = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.final_lr_frac + (1 - args.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * q)))

    losses = []
    t_start = time.time()
    cpu_start = time.process_time()
    with training_attention():
        blocks = make_trainable(unet)
        unet.train()
        for step in range(args.steps):
            imgs, labels = batch(sources, args.batch, g)
            x0 = imgs * 2.0 - 1.0
            t = torch.randint(0, 1000, (args.batch,), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            drop = torch.rand(args.batch, generator=g) < args.cfg_dropout
            labels = torch.where(drop, torch.zeros_like(labels), labels)
            pred = unet(x_t, t.float(), context=emb[labels])
            loss = F.mse_loss(pred, eps)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            decay = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p.detach(), 1 - decay)
            losses.append(loss.item())
            if args.bench and step + 1 >= args.bench:
                el = time.time() - t_start
                log(f"bench: {step + 1} steps in {el:.1f}s = {el / (step + 1):.3f} s/step "
                    f"(batch {args.batch}); {n_params} parameters")
                return None
            if (step + 1) % 25 == 0 or step + 1 == args.steps:
                el = time.time() - t_start
                log(f"step {step + 1}/{args.steps} loss(last25) {np.mean(losses[-25:]):.4f} lr {lr_at(step):.2e} "
                    f"elapsed {el / 60:.1f} min ({el / (step + 1):.3f} s/step)")
            if (step + 1) % 500 == 0 and step + 1 < args.steps:
                save(args, refmod, unet, ema, emb, cfg, step + 1, partial=True)
        restore_blocks(blocks)
    minutes = (time.time() - t_start) / 60.0
    cpu_minutes = (time.process_time() - cpu_start) / 60.0
    save(args, refmod, unet, ema, emb, cfg, args.steps, partial=False)
    return {"minutes": minutes, "cpu_minutes": cpu_minutes, "losses": losses, "n_params": n_params}


def save(args, refmod, unet, ema, emb, cfg, steps, partial):
    from safetensors.torch import save_file

    names = [k for k, _ in unet.named_parameters()]
    sd = {}
    ema_unet = dict(zip(names, ema[:-1]))
    for k, v in unet.state_dict().items():  # buffers (none in this UNet) and EMA parameters
        sd[refmod.UNET_PREFIX + k] = ema_unet.get(k, v).detach().to(torch.float16).contiguous()
    sd[refmod.EMBEDDINGS_KEY] = ema[-1].detach().to(torch.float16).contiguous()
    training = {k: getattr(args, k) for k in DEFAULTS}
    training.update({"steps_done": steps, "weights": "EMA", "data": "scikit-image sample images, see heldout.json",
                     "tokens": TOKENS})
    meta = {
        "format": refmod.FORMAT_TAG,
        "vocabulary": json.dumps(VOCABULARY),
        "unet_config": json.dumps(cfg),
        "sampling_settings": json.dumps(refmod.SD1_SAMPLING_SETTINGS),
        "model_type": "eps",
        "image_size": "32",
        "latent": "pixel space: latent = 2 * image - 1",
        "training_steps": str(steps),
        "seed": str(args.seed),
        "training": json.dumps(training),
    }
    out = args.out / refmod.WEIGHTS_NAME
    if partial:
        out = args.out / (refmod.WEIGHTS_NAME + ".partial")
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------------------- evaluate

def evaluate(args, refmod, sources, log, train_info=None):
    import comfy.samplers
    from PIL import Image

    path = args.out / refmod.WEIGHTS_NAME
    refmod._cache.clear()
    patcher, clip, vae = refmod.load_reference_model(path)
    model = patcher.model
    ms = model.model_sampling
    heldout = refmod.heldout_images(args.out / refmod.HELDOUT_DIR_NAME)
    g = torch.Generator().manual_seed(1234)

    def cond_of(prompt, n):
        return clip.encode_from_tokens(clip.tokenize(prompt)).expand(n, -1, -1)

    @torch.no_grad()
    def denoise(x, sigma, cond):
        s = torch.full((x.shape[0],), float(sigma)) if not torch.is_tensor(sigma) or sigma.ndim == 0 else sigma
        return model.apply_model(x, s, c_crossattn=cond)

    x0 = torch.cat([vae.encode(img) for _, _, img in heldout])  # [N, 3, 32, 32]
    prompts = [p for _, p, _ in heldout]
    cond = torch.cat([cond_of(p, 1) for p in prompts])
    uncond = cond_of("", len(prompts))
    n_draws = 16

    def eps_mse(x0, cond, t, draws=n_draws, gen=None):
        sigma = ms.sigmas[t]
        errs = []
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=gen)
            x = x0 + sigma * eps
            d = denoise(x, sigma, cond)
            errs.append(((x - d) / sigma - eps).pow(2).mean().item())
        return float(np.mean(errs))

    ts = [100, 300, 500, 800]
    mse_cond = {t: eps_mse(x0, cond, t, gen=torch.Generator().manual_seed(1000 + t)) for t in ts}
    mse_uncond = {t: eps_mse(x0, uncond, t, gen=torch.Generator().manual_seed(1000 + t)) for t in ts}
    # every held-out image with the prompt of the next source (a wrong prompt)
    wrong = torch.cat([cond_of(prompts[(i + 1) % len(prompts)], 1) for i in range(len(prompts))])
    mse_wrong = {t: eps_mse(x0, wrong, t, gen=torch.Generator().manual_seed(1000 + t)) for t in ts}
    # the same measure on training-region crops (overfitting gauge)
    gt = torch.Generator().manual_seed(99)
    tr_imgs, tr_labels = batch(sources, 32, gt)
    tr_cond = clip.embeddings[tr_labels].float()
    mse_train = {t: eps_mse(tr_imgs * 2 - 1, tr_cond, t, draws=4, gen=torch.Generator().manual_seed(2000 + t))
                 for t in ts}
    log("held-out eps MSE (prompt) " + json.dumps(mse_cond))
    log("held-out eps MSE (\"\")     " + json.dumps(mse_uncond))
    log("held-out eps MSE (wrong)  " + json.dumps(mse_wrong))
    log("train-crop eps MSE        " + json.dumps(mse_train))

    # deterministic DDIM round trip in ComfyUI sigma space
    def ddim_invert(x, sigmas, cond):
        s = sigmas.flip(0)  # 0 -> sigma_max
        for i in range(len(s) - 1):
            sig, nxt = float(s[i]), float(s[i + 1])
            eps = (x - denoise(x, nxt, cond)) / nxt  # evaluated at the current x, labelled with the next sigma
            x = x + (nxt - sig) * eps
        return x

    def ddim_sample(x, sigmas, cond, uncond=None, cfg=1.0):
        for i in range(len(sigmas) - 1):
            sig, nxt = float(sigmas[i]), float(sigmas[i + 1])
            d = denoise(x, sig, cond)
            if uncond is not None and cfg != 1.0:
                du = denoise(x, sig, uncond)
                d = du + cfg * (d - du)
            x = x + (nxt - sig) * (x - d) / sig
        return x

    def psnr(a, b):
        mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
        return (10 * torch.log10(1.0 / mse))

    roundtrip = {}
    for sched in ("ddim_uniform", "simple"):
        roundtrip[sched] = {}
        for T in (50, 10, 4):
            sigmas = comfy.samplers.calculate_sigmas(ms, sched, T).float()
            z = ddim_invert(x0.clone(), sigmas, cond)
            rec = ddim_sample(z, sigmas, cond)
            img0 = vae.decode(x0)
            p = psnr(vae.decode(rec), img0)
            roundtrip[sched][T] = {"psnr_mean_db": round(float(p.mean()), 2), "psnr_min_db": round(float(p.min()), 2),
                                   "noise_std": round(float((z / float(sigmas[0])).std()), 3)}
        log(f"DDIM round trip ({sched}) " + json.dumps(roundtrip[sched]))

    # samples grid: one row per prompt (cfg 3 against ""), last row unconditional; DDIM 50 (ddim_uniform)
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50).float()
    cols = 8
    rows = [p for p in VOCABULARY if p] + [""]
    noise = torch.randn(cols, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    tiles = []
    cfg_effect = {}
    for p in rows:
        x = noise * math.sqrt(1.0 + float(sigmas[0]) ** 2)
        c = cond_of(p, cols)
        out = ddim_sample(x, sigmas, c, cond_of("", cols), cfg=3.0 if p else 1.0)
        if p:
            plain = ddim_sample(x, sigmas, c)
            cfg_effect[p] = round(float((vae.decode(out) - vae.decode(plain)).abs().mean()), 4)
        tiles.append(vae.decode(out))
    grid = torch.ones(len(rows) * 34 + 2, cols * 34 + 2, 3)
    for r, row in enumerate(tiles):
        for c in range(cols):
            grid[2 + r * 34:2 + r * 34 + 32, 2 + c * 34:2 + c * 34 + 32] = row[c]
    arr = (grid.numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(args.out / "samples.png")

    meta = refmod.reference_metadata(path)
    n_params = sum(p.numel() for p in model.diffusion_model.parameters()) + clip.embeddings.numel()
    report = {
        "model": {
            "class": "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel (host) in comfy.model_base.BaseModel "
                     "(EPS, SD1 ModelSamplingDiscrete)",
            "unet_config": meta["unet_config"],
            "prompt_embeddings": list(clip.embeddings.shape),
            "vocabulary": meta["vocabulary"],
            "parameters": n_params,
            "file": refmod.WEIGHTS_NAME,
            "file_bytes": path.stat().st_size,
            "dtype_on_disk": "float16",
            "pixel_space": "32x32 RGB, latent = 2 * image - 1",
        },
        "training": meta["training"],
        "heldout": {"images": len(heldout), "noise_draws_per_image": n_draws,
                    "eps_mse_prompt": mse_cond, "eps_mse_empty_prompt": mse_uncond,
                    "eps_mse_wrong_prompt": mse_wrong, "eps_mse_training_crops": mse_train},
        "ddim_round_trip": {"note": "deterministic DDIM inversion image -> noise (D evaluated at the current x with "
                                    "the next, noisier sigma) then DDIM sampling back, cfg 1 with the image's prompt, "
                                    "PSNR of the 0..1 images over the held-out set",
                            **roundtrip},
        "samples": {"file": "samples.png", "rows": rows, "columns": cols, "sampler": "DDIM 50 (ddim_uniform)",
                    "cfg": "3.0 against the empty prompt (last row: empty prompt, cfg 1)",
                    "mean_abs_change_cfg3_vs_cfg1": cfg_effect},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    old = args.out / "training_report.json"
    if train_info is not None:
        losses = train_info["losses"]
        tenth = max(1, len(losses) // 10)
        report["training"].update({
            "minutes": round(train_info["minutes"], 2),
            "cpu_minutes": round(train_info["cpu_minutes"], 2),
            "final_loss_mean_last_100_steps": round(float(np.mean(losses[-100:])), 5),
            "loss_by_tenth": [round(float(np.mean(losses[i:i + tenth])), 4) for i in range(0, len(losses), tenth)],
        })
    elif old.is_file():  # --eval-only keeps the training record
        prev = json.loads(old.read_text()).get("training", {})
        for k in ("minutes", "cpu_minutes", "timing_note", "final_loss_mean_last_100_steps", "loss_by_tenth"):
            if k in prev:
                report["training"][k] = prev[k]
    old.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {old}")
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "reference")
    ap.add_argument("--bench", type=int, default=0, help="time this many training steps, write nothing")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the existing weights (no training)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    refmod = load_refmod()
    sources = load_sources()
    args.out.mkdir(parents=True, exist_ok=True)
    train_info = None
    if not args.eval_only:
        if not args.bench:
            write_heldout(sources, args.out / refmod.HELDOUT_DIR_NAME)
        train_info = train(args, refmod, sources, log)
        if args.bench:
            return 0
        partial = args.out / (refmod.WEIGHTS_NAME + ".partial")
        if partial.exists():
            partial.unlink()
    evaluate(args, refmod, sources, log, train_info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
