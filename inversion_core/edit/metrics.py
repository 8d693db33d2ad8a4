"""Edit metrics: structure (self-similarity distance), background PSNR, the diffusion-classifier margin.

* ``structure_distance``: PIE-Bench's structure distance (Tumanyan et al.'s self-similarity loss) with any feature
  extractor: the cosine self-similarity matrices over spatial positions of source and edit features, their mean
  squared difference, ×1000 (PIE-Bench reports ×10³). Lower = the edit kept the source's structure.
* ``patch_features``: a model-free feature map — each pixel patch with its mean over all its values removed (so a
  uniform brightness shift does not count as structure; a colour shift, which moves the channels apart, does).
* ``background_psnr``: PSNR over the pixels outside the edit mask only.
* ``classifier_errors``: per prompt, mean over fixed σ and noise of ‖ε − ε̂(x_σ, c)‖² (Li et al.'s diffusion
  classifier); the margin between two prompts is how much better the model explains the image with one of them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def self_similarity(features: Tensor) -> Tensor:
    """[B, C, H, W] → [B, HW, HW] cosine similarity between every pair of spatial positions."""
    f = features.float().flatten(2).transpose(1, 2)          # [B, HW, C]
    f = torch.nn.functional.normalize(f, dim=-1, eps=1e-8)
    return f @ f.transpose(1, 2)


def structure_distance(features_a: Tensor, features_b: Tensor) -> Tensor:
    """Per item: 1000 × mean squared difference of the self-similarity matrices."""
    if features_a.shape != features_b.shape:
        raise ValueError(f"feature shapes differ: {tuple(features_a.shape)} vs {tuple(features_b.shape)}")
    d = self_similarity(features_a) - self_similarity(features_b)
    return 1000.0 * d.pow(2).flatten(1).mean(1)


def patch_features(images: Tensor, patch: int = 4) -> Tensor:
    """Images [B, H, W, C] (the host's IMAGE) or [B, C, H, W] → [B, C·p², H/p, W/p] mean-removed pixel patches."""
    x = images.float()
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.movedim(-1, 1)
    b, c, h, w = x.shape
    f = torch.nn.functional.unfold(x, kernel_size=patch, stride=patch)   # [B, C·p², L]
    f = f - f.mean(dim=1, keepdim=True)
    return f.reshape(b, c * patch * patch, h // patch, w // patch)


def background_psnr(a: Tensor, b: Tensor, mask: Tensor, max_value: float = 1.0, cap: float = 100.0) -> Tensor:
    """Per item PSNR (dB) between images ``a`` and ``b`` ([B, H, W, C] in 0..1) over the pixels where ``mask``
    ([B or 1, H, W], 1 = edited) is 0; identical backgrounds give ``cap``."""
    keep = (mask.float() < 0.5).to(a.device)
    if keep.ndim == 2:
        keep = keep[None]
    keep = keep.expand(a.shape[0], *keep.shape[1:])[..., None].expand_as(a).float()
    se = ((a.float() - b.float()) ** 2 * keep).flatten(1).sum(1)
    n = keep.flatten(1).sum(1).clamp_min(1.0)
    mse = se / n
    out = torch.full_like(mse, cap)
    nz = mse > 0
    out[nz] = (10.0 * torch.log10(max_value ** 2 / mse[nz])).clamp(max=cap)
    return out


def classifier_errors(eps_fn: Callable[[Tensor, float, int], Tensor], x0: Tensor, n_prompts: int,
                      sigmas: Sequence[float], noises: Sequence[Tensor]) -> Tensor:
    """[B, n_prompts]: mean over ``sigmas`` × ``noises`` of the per-item ‖ε − ε̂(x0 + σε, σ, prompt)‖² (mean over
    elements). ``eps_fn(x_sigma, sigma, prompt_index)`` returns the model's noise prediction."""
    total = torch.zeros(x0.shape[0], n_prompts)   # on the CPU: each term is brought here
    count = 0
    for sigma in sigmas:
        for eps in noises:
            x = x0 + float(sigma) * eps
            for p in range(n_prompts):
                err = (eps_fn(x, float(sigma), p).float() - eps).pow(2).flatten(1).mean(1)
                total[:, p] += err.cpu()
            count += 1
    return total / max(count, 1)


def psnr(a: Tensor, b: Tensor, max_value: float = 1.0) -> Tensor:
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(max_value ** 2 / mse.clamp_min(1e-20))


__all__ = ["self_similarity", "structure_distance", "patch_features", "background_psnr", "classifier_errors", "psnr",
]
