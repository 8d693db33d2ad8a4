"""Reconstruction quality: PSNR and SSIM on images in [0, 1] (kornia, which ComfyUI ships), per batch item."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _bchw(images: Tensor) -> Tensor:
    """ComfyUI IMAGE [B, H, W, C] → [B, C, H, W] float32."""
    return images.movedim(-1, 1).float()


def psnr(original: Tensor, reconstructed: Tensor) -> list[float]:
    """Peak signal-to-noise ratio in dB per item (images in [0, 1]; inf for identical images)."""
    diff = (_bchw(original) - _bchw(reconstructed)).double().pow(2).flatten(1).mean(1)
    return [float("inf") if m == 0 else 10 * math.log10(1.0 / m) for m in diff.tolist()]


def ssim(original: Tensor, reconstructed: Tensor, window: int = 11) -> list[float]:
    """Mean structural similarity per item (kornia's Gaussian-window SSIM; window shrunk for tiny images)."""
    import kornia

    a, b = _bchw(original), _bchw(reconstructed)
    w = min(window, a.shape[-1], a.shape[-2])
    w -= 1 - w % 2                                    # kornia needs an odd window
    return kornia.metrics.ssim(a, b, w, max_val=1.0).flatten(1).mean(1).tolist()
