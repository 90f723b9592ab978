"""Rotary position embeddings of the DiT: the 3D (time, height, width) RoPE of self-attention and the
1D RoPE that places speakers apart in the audio cross-attention.

The 3D tables are computed in float64 and the rotation is done in float64, as the reference model does;
tables are built directly on the compute device and cached per grid, so blocks never copy them from
the host.
"""
from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def rope_3d_channels(head_dim: int) -> tuple[int, int, int]:
    """Real channels per head given to (time, height, width): d - 4*(d//6), 2*(d//6), 2*(d//6)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    part = head_dim // 6
    return head_dim - 4 * part, 2 * part, 2 * part


def _axis_angles(n: int, channels: int, device: torch.device) -> torch.Tensor:
    """Angles pos * theta^(-2i/channels) in float64, `[n, channels // 2]`."""
    inv = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, channels, 2, dtype=torch.float64, device=device) / channels)
    return torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv)


def rope_3d_freqs(grid: tuple[int, int, int], head_dim: int, device: torch.device | str) -> torch.Tensor:
    """Complex128 rotations `[f*h*w, 1, head_dim // 2]` for tokens laid out frame-major, then rows, then columns."""
    f, h, w = (int(v) for v in grid)
    device = torch.device(device)
    ct, ch, cw = rope_3d_channels(head_dim)
    at = _axis_angles(f, ct, device)
    ah = _axis_angles(h, ch, device)
    aw = _axis_angles(w, cw, device)
    angles = torch.cat(
        [
            at[:, None, None, :].expand(f, h, w, -1),
            ah[None, :, None, :].expand(f, h, w, -1),
            aw[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, head_dim // 2)
    return torch.polar(torch.ones_like(angles), angles)


class Rope3DCache:
    """Per-(grid, device) cache of `rope_3d_freqs`; a few entries cover the shapes of one deployment."""

    def __init__(self, head_dim: int, max_entries: int = 8) -> None:
        self.head_dim = head_dim
        self.max_entries = max_entries
        self._tables: dict[tuple, torch.Tensor] = {}

    def get(self, grid: tuple[int, int, int], device: torch.device | str) -> torch.Tensor:
        device = torch.device(device)
        key = (tuple(int(v) for v in grid), device.type, device.index)
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= self.max_entries:
                self._tables.pop(next(iter(self._tables)))
            table = rope_3d_freqs(grid, self.head_dim, device)
            self._tables[key] = table
        return table

    def clear(self) -> None:
        self._tables.clear()


def apply_rope_3d(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x `[B, L, N, C]` by `freqs` `[L, 1, C/2]` in float64 (float32 for half x); returns x's dtype.

    `freqs` may also be a real (cos, sin) table from `real_rope_table` (the compiled DiT's form)."""
    b, l, n, c = x.shape
    if freqs.shape[0] != l:
        raise ValueError(f"RoPE table covers {freqs.shape[0]} tokens, input has {l}")
    if not freqs.is_complex():
        return _rotate_real(x, freqs)
    if x.dtype in (torch.bfloat16, torch.float16):
        # The result is rounded to half precision: float32 rotation (error ~1e-7) is indistinguishable after
        # that rounding and moves half the bytes of the float64 path (measured 0.07 s of a 4.2 s H100 forward).
        xc = torch.view_as_complex(x.float().reshape(b, l, n, c // 2, 2))
        return torch.view_as_real(xc * freqs.to(torch.complex64)).reshape(b, l, n, c).to(x.dtype)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, l, n, c // 2, 2))
    return torch.view_as_real(xc * freqs).reshape(b, l, n, c).to(x.dtype)


def real_rope_table(freqs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`rope_3d_freqs` as a real (cos, sin) table `[L, 1, C/2, 2]` in `dtype`, for `apply_rope_3d`.

    The complex form is what eager mode runs fastest (one complex multiply kernel); under torch.compile
    Inductor has no complex kernels and would fall back to eager around every rotation, so the compiled
    DiT is given this table instead. float32 for half activations, float64 otherwise, as the complex path.
    """
    return torch.view_as_real(freqs.to(torch.complex64 if dtype == torch.float32 else torch.complex128)).to(dtype)


def _rotate_real(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The complex rotation written out on a (cos, sin) table; same arithmetic, so same results."""
    b, l, n, c = x.shape
    pairs = x.to(table.dtype).reshape(b, l, n, c // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = table[..., 0], table[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).reshape(b, l, n, c).to(x.dtype)


def rope_1d_angles(positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Float32 angles `[..., head_dim]` for (possibly fractional) positions, each frequency repeated for its pair."""
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float() / head_dim))
    angles = positions.float()[..., None] * inv
    return angles.repeat_interleave(2, dim=-1)


def apply_rope_1d(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) in float32; returns x's dtype.

    `angles` broadcasts against x (e.g. `[B, L, 1, C]` for x `[B, L, N, C]`).
    """
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (xf * angles.cos() + rotated * angles.sin()).to(x.dtype)
