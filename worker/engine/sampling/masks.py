"""Motion mask: where the video may move (issue 19).

Outside the mask the latents are pinned to the condition frame's latent after every step, noised to the
step's level like an inpainting blend, so at the last step (timestep 0) they equal it exactly and the
background stays as still as the reference. The mask reaches the latent grid the way speaker boxes do:
built at source resolution, resized and centre-cropped like the image, then nearest-reduced.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.engine.sampling.buckets import resize_and_center_crop_masks
from worker.engine.sampling.schedule import NUM_TRAIN_TIMESTEPS

VAE_SPATIAL_STRIDE = 8


def latent_motion_mask(mask: np.ndarray, target_hw: tuple[int, int]) -> torch.Tensor:
    """[lat_h, lat_w] float 1 where motion is allowed, from a bool [H, W] source-resolution mask."""
    th, tw = target_hw
    src = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None]
    cropped = resize_and_center_crop_masks(src, (th, tw))
    lat = torch.nn.functional.interpolate(
        cropped[None], size=(th // VAE_SPATIAL_STRIDE, tw // VAE_SPATIAL_STRIDE), mode="nearest"
    )[0, 0]
    return (lat > 0).float()


def pin_outside(latent: torch.Tensor, mask: torch.Tensor, still: torch.Tensor, noise: torch.Tensor,
                t_next: torch.Tensor) -> torch.Tensor:
    """`latent` [C, T, h, w] with the region outside `mask` [h, w] set to `still` [C, 1, h, w] noised to
    `t_next` with the chunk's own starting `noise` (flow matching: (1 - s) * x0 + s * noise)."""
    sigma = (t_next.float() / NUM_TRAIN_TIMESTEPS).to(latent.device).reshape(())
    target = (1 - sigma) * still.to(latent.dtype) + sigma * noise.to(latent.dtype)
    keep = mask.to(device=latent.device, dtype=latent.dtype)
    return latent * keep + target * (1 - keep)
