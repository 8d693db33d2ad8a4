#!/usr/bin/env python
"""Train the pack's tiny reference diffusion models and write their evidence (weights, held-out images, report, samples).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_reference_model.py            # train + evaluate (~35 min, 1 core)
    .venv/bin/python scripts/train_reference_model.py --eval-only                # re-evaluate the shipped weights
    .venv/bin/python scripts/train_reference_model.py --bench 10                 # time 10 steps, write nothing
    ... --model sd3-mmdit-flow          # the second model (below): 2000 steps x 16, 8 CPU-min (22 min wall, busy)

Two models, the same data, held-out images, prompt vocabulary and prompt-embedding context; ``--model`` picks one:

``sd-unet-eps`` (default) -> ``models/reference/``. The host's SD UNet (``reference_unet_config()`` in ``nodes/reference_model.py``), 32x32 RGB pixel space
(latent = 2 * image - 1), epsilon prediction, SD1.x noise schedule (taken from the host's ``ModelSamplingDiscrete``),
cross-attention on a learned prompt embedding table (vocabulary below; "" is the unconditional prompt, used for
classifier-free dropout). Data: images that ship inside scikit-image (no network), random square crops (30..100% of
the short side) resized to 32x32 with antialiasing, random horizontal flips. The right 30% of every source image is
never sampled in training; the held-out images are crops from that strip.

``sd3-mmdit-flow`` -> ``models/reference_flow/``. The host's SD3 MMDiT (``comfy.ldm.modules.diffusionmodules.mmdit``,
``OpenAISignatureMMDITWrapper`` inside ``comfy.model_base.SD3``) at depth 2 (the class ties width to depth: hidden
64 * depth = 128, 2 heads), patch 2 (16x16 = 256 image tokens + 4 prompt tokens), fixed sin-cos positions (no
``pos_embed`` buffer). Rectified flow, i.e. the host's CONST model sampling (``ModelSamplingDiscreteFlow``): x_s =
(1 - s) x0 + s eps, the network predicts v = eps - x0 at timestep 1000 s, and the host's ``CONST.calculate_denoised``
gives x0 = x - s v. Trained on s = ``ModelSamplingDiscreteFlow.sigma(1000 u)``, u ~ U(0, 1), with the host's shift
``FLOW_SHIFT`` (see ``nodes/reference_model.py`` for why 1.65 at 32x32). Conditioning as SD3: the prompt tokens as
context (``context_embedder``: Linear 64 -> 128) plus a pooled vector ``y`` (``adm_in_channels`` = 64): the mean of
the prompt's token embeddings, which the CLIP stand-in returns as ``pooled_output``. Training init as in DiT: the
adaLN modulation and final linear layers start at zero (every block starts as the identity).

Deterministic: fixed seed and a fixed number of steps (not wall time). Output: ``reference_model.safetensors`` /
``reference_flow_model.safetensors`` (fp16 with metadata), ``heldout/`` (written by the first model; the second uses
the same images), ``training_report.json``, ``samples.png``.
Training-only changes to the host modules (taken back before evaluation, never shipped): the SDPA attention kernel
instead of the fork's CPU default (sub-quadratic) for speed, and for the UNet an out-of-place copy of
``BasicTransformerBlock``'s forward (the host's adds in place, which autograd cannot differentiate through; the fork's
MMDiT blocks add out of place and train unchanged). Both compute the same function; the script checks that before
training.
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
FLOW_DEFAULTS = dict(DEFAULTS, steps=2000, batch=16, seed=20251202, ema=0.999)
MODEL_NAMES = ("sd-unet-eps", "sd3-mmdit-flow")


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


class UnetEps:
    """sd-unet-eps: the host's SD UNet, epsilon prediction, SD1 schedule (t uniform over the host's 1000 steps)."""

    name = "sd-unet-eps"
    defaults = DEFAULTS

    def __init__(self, refmod):
        self.refmod = refmod
        self.cfg = refmod.reference_unet_config(MODEL_CHANNELS, CONTEXT_DIM)
        self.abar = sd1_alphas_cumprod(refmod).float()

    def build(self):
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        return UNetModel(**self.cfg, dtype=torch.float32, operations=self.refmod._InitOps.get())

    def forward(self, net, x, t, emb_rows):
        return net(x, t, context=emb_rows)

    @contextlib.contextmanager
    def trainable(self, net):
        with training_attention():
            blocks = make_trainable(net)
            try:
                yield
            finally:
                restore_blocks(blocks)

    def check_times(self):
        return torch.tensor([10.0, 300.0, 600.0, 990.0])

    def noisy(self, x0, g):
        """(network input, network timestep, target) of a training batch."""
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = self.abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t.float(), eps

    def metadata(self):
        return {"unet_config": json.dumps(self.cfg), "sampling_settings": json.dumps(self.refmod.SD1_SAMPLING_SETTINGS),
                "model_type": "eps"}


class MMDiTFlow:
    """sd3-mmdit-flow: the host's SD3 MMDiT, rectified flow (CONST), the host's shifted flow schedule."""

    name = "sd3-mmdit-flow"
    defaults = FLOW_DEFAULTS

    def __init__(self, refmod):
        from comfy.model_sampling import ModelSamplingDiscreteFlow

        self.refmod = refmod
        self.cfg = refmod.reference_mmdit_config(context_dim=CONTEXT_DIM)
        self.sampling = {"shift": refmod.FLOW_SHIFT}
        self.ms = ModelSamplingDiscreteFlow(types.SimpleNamespace(sampling_settings=self.sampling))

    def build(self):
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        net = OpenAISignatureMMDITWrapper(**self.cfg, dtype=torch.float32, operations=self.refmod._InitOps.get())
        with torch.no_grad():  # DiT's training init: adaLN modulations and the output layer start at zero
            for m in net.modules():
                if hasattr(m, "adaLN_modulation"):
                    m.adaLN_modulation[-1].weight.zero_()
                    m.adaLN_modulation[-1].bias.zero_()
            net.final_layer.linear.weight.zero_()
            net.final_layer.linear.bias.zero_()
        return net

    def forward(self, net, x, t, emb_rows):
        return net(x, t, context=emb_rows, y=emb_rows.mean(dim=1))  # y: the pooled vector the CLIP stand-in gives

    @contextlib.contextmanager
    def trainable(self, net):
        with training_attention():
            yield

    def check_times(self):
        return torch.tensor([10.0, 300.0, 600.0, 990.0])

    def noisy(self, x0, g):
        u = torch.rand((x0.shape[0],), generator=g)
        sigma = self.ms.sigma(u * 1000.0).float()
        eps = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * eps, self.ms.timestep(sigma).float(), eps - x0

    def metadata(self):
        return {"unet_config": json.dumps(self.cfg), "sampling_settings": json.dumps(self.sampling),
                "model_type": "flow", "architecture": "mmdit",
                "pooled": "y = mean of the prompt's token embeddings (pooled_output of the CLIP stand-in)"}


SPECS = {UnetEps.name: UnetEps, MMDiTFlow.name: MMDiTFlow}


# ---------------------------------------------------------------------------------------------------------- train

def train(args, refmod, sources, log):
    spec = SPECS[args.model](refmod)
    torch.manual_seed(args.seed)
    unet = spec.build()
    emb = torch.nn.Parameter(torch.randn(len(VOCABULARY), TOKENS, CONTEXT_DIM))
    n_params = sum(p.numel() for p in unet.parameters()) + emb.numel()

    # the training-only forward computes the host's function: check on a random batch first, with a copy of the
    # network whose weights are all random (the zero-initialised output layers would make the check vacuous)
    g = torch.Generator().manual_seed(args.seed)
    xt = torch.randn(4, 3, 32, 32, generator=g)
    tt = spec.check_times()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        probe = spec.build()
        for p in probe.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
        ref = spec.forward(probe, xt, tt, emb[:4])
        with spec.trainable(probe):
            got = spec.forward(probe, xt, tt, emb[:4])
    assert ref.abs().max() > 0 and torch.allclose(ref, got, atol=1e-5, rtol=1e-4), (ref - got).abs().max()

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
    with spec.trainable(unet):
        unet.train()
        for step in range(args.steps):
            imgs, labels = batch(sources, args.batch, g)
            x0 = imgs * 2.0 - 1.0
            x_t, t, target = spec.noisy(x0, g)
            drop = torch.rand(args.batch, generator=g) < args.cfg_dropout
            labels = torch.where(drop, torch.zeros_like(labels), labels)
            pred = spec.forward(unet, x_t, t, emb[labels])
            loss = F.mse_loss(pred, target)
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
                    f"(batch {args.batch}); {n_params} parameters; loss by tenth "
                    + " ".join(f"{np.mean(c):.4f}" for c in np.array_split(np.array(losses), min(10, len(losses)))))
                return None
            if (step + 1) % 25 == 0 or step + 1 == args.steps:
                el = time.time() - t_start
                log(f"step {step + 1}/{args.steps} loss(last25) {np.mean(losses[-25:]):.4f} lr {lr_at(step):.2e} "
                    f"elapsed {el / 60:.1f} min ({el / (step + 1):.3f} s/step)")
            if (step + 1) % 500 == 0 and step + 1 < args.steps:
                save(args, refmod, spec, unet, ema, emb, step + 1, partial=True)
    minutes = (time.time() - t_start) / 60.0
    cpu_minutes = (time.process_time() - cpu_start) / 60.0
    save(args, refmod, spec, unet, ema, emb, args.steps, partial=False)
    return {"minutes": minutes, "cpu_minutes": cpu_minutes, "losses": losses, "n_params": n_params}


def save(args, refmod, spec, unet, ema, emb, steps, partial):
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
        **spec.metadata(),
        "image_size": "32",
        "latent": "pixel space: latent = 2 * image - 1",
        "training_steps": str(steps),
        "seed": str(args.seed),
        "training": json.dumps(training),
    }
    out = args.out / refmod.weights_name(args.model)
    if partial:
        out = args.out / (refmod.weights_name(args.model) + ".partial")
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------------------- evaluate

def psnr(a, b):
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1.0 / mse))


def samples_grid(sample, cond_of, vae, path):
    """samples.png: one row per prompt (cfg 3 against ""), last row unconditional; the same noise in every row.
    ``sample(noise, cond, uncond, cfg)`` -> latent. Returns (rows, columns, mean |cfg 3 - cfg 1| per prompt)."""
    from PIL import Image

    cols = 8
    rows = [p for p in VOCABULARY if p] + [""]
    noise = torch.randn(cols, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    tiles = []
    cfg_effect = {}
    for p in rows:
        c = cond_of(p, cols)
        out = sample(noise, c, cond_of("", cols), 3.0 if p else 1.0)
        if p:
            plain = sample(noise, c, None, 1.0)
            cfg_effect[p] = round(float((vae.decode(out) - vae.decode(plain)).abs().mean()), 4)
        tiles.append(vae.decode(out))
    grid = torch.ones(len(rows) * 34 + 2, cols * 34 + 2, 3)
    for r, row in enumerate(tiles):
        for c in range(cols):
            grid[2 + r * 34:2 + r * 34 + 32, 2 + c * 34:2 + c * 34 + 32] = row[c]
    arr = (grid.numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(path)
    return rows, cols, cfg_effect


def model_record(refmod, path, model, clip, cls: str) -> dict:
    meta = refmod.reference_metadata(path)
    return {
        "class": cls,
        "unet_config": meta["unet_config"],
        "sampling_settings": meta["sampling_settings"],
        "prompt_embeddings": list(clip.embeddings.shape),
        "vocabulary": meta["vocabulary"],
        "parameters": sum(p.numel() for p in model.diffusion_model.parameters()) + clip.embeddings.numel(),
        "file": path.name,
        "file_bytes": path.stat().st_size,
        "dtype_on_disk": "float16",
        "pixel_space": "32x32 RGB, latent = 2 * image - 1",
    }


def write_report(args, report, train_info, log):
    old = args.out / "training_report.json"
    if train_info is not None:
        report["training"].update(training_summary(train_info))
    elif old.is_file():  # --eval-only keeps the training record
        prev = json.loads(old.read_text()).get("training", {})
        for k in ("minutes", "cpu_minutes", "timing_note", "final_loss_mean_last_100_steps", "loss_by_tenth"):
            if k in prev:
                report["training"][k] = prev[k]
    old.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {old}")
    return report


def evaluate(args, refmod, sources, log, train_info=None):
    if args.model == MMDiTFlow.name:
        return evaluate_flow(args, refmod, sources, log, train_info)
    import comfy.samplers

    path = args.out / refmod.weights_name(args.model)
    refmod._cache.clear()
    patcher, clip, vae = refmod.load_reference_model(path=path)
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

    # samples grid: DDIM 50 (ddim_uniform)
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50).float()
    rows, cols, cfg_effect = samples_grid(
        lambda noise, c, u, cfg: ddim_sample(noise * math.sqrt(1.0 + float(sigmas[0]) ** 2), sigmas, c, u, cfg),
        cond_of, vae, args.out / "samples.png")

    report = {
        "model": model_record(refmod, path, model, clip,
                              "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel (host) in "
                              "comfy.model_base.BaseModel (EPS, SD1 ModelSamplingDiscrete)"),
        "training": refmod.reference_metadata(path)["training"],
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
    return write_report(args, report, train_info, log)


FLOW_SIGMAS = (0.1, 0.25, 0.5, 0.75, 0.9)
EPS_T = (100, 300, 500, 800)  # the first model's report points; the flow model is also scored at the same SNR


def evaluate_flow(args, refmod, sources, log, train_info=None):
    """Held-out flow-matching loss per sigma (with untrained and zero-velocity baselines), Euler round trips through
    the host's k-diffusion sampler, samples.png."""
    import comfy.samplers
    from comfy.k_diffusion.sampling import sample_euler
    from comfy.model_sampling import ModelSamplingDiscrete

    path = args.out / refmod.weights_name(args.model)
    refmod._cache.clear()
    patcher, clip, vae = refmod.load_reference_model(path=path)
    model = patcher.model
    ms = model.model_sampling
    meta = refmod.reference_metadata(path)
    untrained = refmod.build_model_patcher(meta["unet_config"], None, "flow", seed=3,
                                           sampling_settings=meta["sampling_settings"]).model
    heldout = refmod.heldout_images(refmod.reference_model_dir(UnetEps.name) / refmod.HELDOUT_DIR_NAME)

    def cond_of(prompt, n):
        return clip.encode_from_tokens(clip.tokenize(prompt)).expand(n, -1, -1)

    @torch.no_grad()
    def denoiser(net):
        def d(x, sigma, cond):
            s = sigma if torch.is_tensor(sigma) and sigma.ndim == 1 else torch.full((x.shape[0],), float(sigma))
            return net.apply_model(x, s, c_crossattn=cond, y=cond.mean(dim=1))  # y = the CLIP stand-in's pooled
        return d

    denoise = denoiser(model)
    x0 = torch.cat([vae.encode(img) for _, _, img in heldout])  # [N, 3, 32, 32]
    prompts = [p for _, p, _ in heldout]
    cond = torch.cat([cond_of(p, 1) for p in prompts])
    n_draws = 16

    def v_mse(x0, cond, sigma, draws=n_draws, seed=0, net=denoise):
        """Mean squared error of the velocity v = eps - x0 the host's CONST model implies: v = (x - D(x)) / sigma."""
        gen = torch.Generator().manual_seed(seed)
        errs = []
        for _ in range(draws):
            eps = torch.randn(x0.shape, generator=gen)
            x = (1 - sigma) * x0 + sigma * eps
            v = (x - net(x, sigma, cond)) / sigma
            errs.append((v - (eps - x0)).pow(2).mean().item())
        return float(np.mean(errs))

    def table(x0, cond, draws=n_draws, net=denoise):
        return {str(s): round(v_mse(x0, cond, s, draws, seed=int(1000 * s), net=net), 5) for s in FLOW_SIGMAS}

    wrong = torch.cat([cond_of(prompts[(i + 1) % len(prompts)], 1) for i in range(len(prompts))])
    tr_imgs, tr_labels = batch(sources, 32, torch.Generator().manual_seed(99))
    heldout_rec = {
        "v_mse_prompt": table(x0, cond),
        "v_mse_empty_prompt": table(x0, cond_of("", len(prompts))),
        "v_mse_wrong_prompt": table(x0, wrong),
        "v_mse_training_crops": table(tr_imgs * 2 - 1, clip.embeddings[tr_labels].float(), draws=4),
        "v_mse_untrained_model": table(x0, cond, draws=4, net=denoiser(untrained)),
        "v_mse_zero_velocity": {str(s): round(float(np.mean([
            (torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(1000 * s) + k)) - x0).pow(2).mean()
            for k in range(n_draws)])), 5) for s in FLOW_SIGMAS},
    }
    # the first model's eps MSE points, at the same signal-to-noise ratio: s_flow = s / (1 + s) for its sigma s;
    # eps = x + (1 - s_flow) v, so eps error = (1 - s_flow) * v error
    sd1 = ModelSamplingDiscrete(types.SimpleNamespace(sampling_settings=refmod.SD1_SAMPLING_SETTINGS))
    eps_at = {}
    for t in EPS_T:
        s_eps = float(sd1.sigmas[t])
        s_flow = s_eps / (1 + s_eps)
        eps_at[str(t)] = round((1 - s_flow) ** 2 * v_mse(x0, cond, s_flow, seed=1000 + t), 5)
    heldout_rec["eps_mse_prompt_at_sd1_t"] = eps_at
    for k, v in heldout_rec.items():
        log(f"held-out {k} {json.dumps(v)}")

    # round trips through the host's Euler sampler (k-diffusion sample_euler on the host model)
    def euler(x, sigmas, cond, uncond=None, cfg=1.0):
        def fn(x, sigma, **kw):
            d = denoise(x, sigma, cond)
            if uncond is not None and cfg != 1.0:
                du = denoise(x, sigma, uncond)
                d = du + cfg * (d - du)
            return d
        return sample_euler(fn, x, sigmas, disable=True)

    @torch.no_grad()
    def ddim_next_label(x, sigmas, cond):
        s = sigmas.flip(0).tolist()
        for cur, nxt in zip(s[:-1], s[1:]):
            x = x + (nxt - cur) * (x - denoise(x, nxt, cond)) / nxt
        return x

    roundtrip = {}
    img0 = vae.decode(x0)
    for sched in ("simple", "normal", "ddim_uniform"):
        roundtrip[sched] = {}
        for T in (50, 10, 4):
            sigmas = comfy.samplers.calculate_sigmas(ms, sched, T).float()
            flipped = sigmas.flip(0).clone()
            flipped[0] = flipped[0] if flipped[0] > 0 else 1e-4  # the host's FlipSigmas
            cell = {"sigma_max": round(float(sigmas[0]), 4)}
            for label, z in (("euler_flipsigmas", euler(x0.clone(), flipped, cond)),
                             ("ddim_next_sigma", ddim_next_label(x0.clone(), sigmas, cond))):
                p = psnr(vae.decode(euler(z, sigmas, cond)), img0)
                cell[label] = {"psnr_mean_db": round(float(p.mean()), 2), "psnr_min_db": round(float(p.min()), 2),
                               "noise_std": round(float(z.std()), 3)}
            roundtrip[sched][T] = cell
        log(f"round trip ({sched}) " + json.dumps(roundtrip[sched]))

    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", 50).float()
    rows, cols, cfg_effect = samples_grid(lambda noise, c, u, cfg: euler(noise, sigmas, c, u, cfg),
                                          cond_of, vae, args.out / "samples.png")
    report = {
        "model": model_record(refmod, path, model, clip,
                              "comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper (host) in "
                              "comfy.model_base.SD3 (FLOW: CONST, ModelSamplingDiscreteFlow)"),
        "training": meta["training"],
        "heldout": {"images": len(heldout), "images_dir": "models/reference/heldout (shared with sd-unet-eps)",
                    "noise_draws_per_image": n_draws,
                    "note": "MSE of the velocity v = eps - x0 at x = (1 - sigma) x0 + sigma eps, per sigma; "
                            "v = (x - D(x, sigma)) / sigma from the host's denoised output. Baselines: the same "
                            "MMDiT with seeded random weights, and predicting v = 0. eps_mse_prompt_at_sd1_t: "
                            "the noise-prediction error at the signal-to-noise ratio of the first model's "
                            "t = 100 / 300 / 500 / 800 (compare with its eps_mse_prompt).",
                    **heldout_rec},
        "round_trip": {"note": "held-out images, cfg 1 with the image's prompt, PSNR of the 0..1 images. Inversion "
                               "image -> sigma_max: 'euler_flipsigmas' = the host's FlipSigmas (0 -> 1e-4) + its "
                               "k-diffusion sample_euler (stock ComfyUI); 'ddim_next_sigma' = D evaluated at the "
                               "current x with the next, noisier sigma (the first model's report convention). "
                               "Replay: sample_euler back down the schedule (for CONST, DDIM eta 0 is Euler).",
                       **roundtrip},
        "samples": {"file": "samples.png", "rows": rows, "columns": cols,
                    "sampler": "host sample_euler, 50 steps (simple)",
                    "cfg": "3.0 against the empty prompt (last row: empty prompt, cfg 1)",
                    "mean_abs_change_cfg3_vs_cfg1": cfg_effect},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    return write_report(args, report, train_info, log)


def training_summary(train_info: dict) -> dict:
    losses = train_info["losses"]
    tenth = max(1, len(losses) // 10)
    return {
        "minutes": round(train_info["minutes"], 2),
        "cpu_minutes": round(train_info["cpu_minutes"], 2),
        "final_loss_mean_last_100_steps": round(float(np.mean(losses[-100:])), 5),
        "loss_by_tenth": [round(float(np.mean(losses[i:i + tenth])), 4) for i in range(0, len(losses), tenth)],
    }


def main(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", choices=MODEL_NAMES, default=MODEL_NAMES[0])
    model = pre.parse_known_args(argv)[0].model
    refmod = load_refmod()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODEL_NAMES, default=MODEL_NAMES[0],
                    help="which reference model (the defaults of the other options follow it)")
    for k, v in SPECS[model].defaults.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    ap.add_argument("--out", type=Path, default=refmod.reference_model_dir(model))
    ap.add_argument("--bench", type=int, default=0, help="time this many training steps, write nothing")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the existing weights (no training)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    sources = load_sources()
    args.out.mkdir(parents=True, exist_ok=True)
    train_info = None
    if not args.eval_only:
        if not args.bench and args.model == UnetEps.name:  # the second model uses the first one's held-out images
            write_heldout(sources, args.out / refmod.HELDOUT_DIR_NAME)
        train_info = train(args, refmod, sources, log)
        if args.bench:
            return 0
        partial = args.out / (refmod.weights_name(args.model) + ".partial")
        if partial.exists():
            partial.unlink()
        report = args.out / "training_report.json"  # the training record first: --eval-only keeps it
        prev = json.loads(report.read_text()) if report.is_file() else {}
        prev["training"] = dict(prev.get("training", {}), **training_summary(train_info))
        report.write_text(json.dumps(prev, indent=1) + "\n")
    evaluate(args, refmod, sources, log, train_info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
