"""InfiniteTalk's audio adapter: wav2vec2 windows -> audio context tokens, and the per-block audio
cross-attention (with the speaker-separating 1D RoPE for two speakers).

The adapter reads, per video frame, a window of `audio_window` wav2vec2 frames of 12 hidden layers x 768
channels. Video frame 0 is its own latent frame; every later latent frame covers `vae_scale` video frames,
whose windows are cut down to 8 entries (first frame: offsets up to 0, middle frames: offset 0, last
frame: offsets from 0). Each latent frame's visual tokens only attend to that latent frame's audio tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from worker.engine.kernels.attention import attention
from worker.engine.models.rope import apply_rope_1d, rope_1d_angles

# The projector is hard-wired to chinese-wav2vec2-base: 12 hidden states (after the first) of width 768.
AUDIO_LAYERS = 12
AUDIO_CHANNELS = 768

# Speaker RoPE positions: person 1 maps into [0, 4], person 2 into [20, 24], background sits at 12.
CLASS_RANGE = 24
CLASS_INTERVAL = 4
SPEAKER1_RANGE = (0, CLASS_INTERVAL)
SPEAKER2_RANGE = (CLASS_RANGE - CLASS_INTERVAL, CLASS_RANGE)
BACKGROUND_POS = CLASS_RANGE // 2


def split_audio_windows(
    audio: torch.Tensor, vae_scale: int = 4, audio_window: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """audio `[B, F, W, 12, 768]` (F = vae_scale*(T-1)+1) -> (first frame `[B, 1, W, 12, 768]`,
    later latent frames `[B, T-1, W + vae_scale - 1, 12, 768]`)."""
    b, f = audio.shape[:2]
    if (f - 1) % vae_scale:
        raise ValueError(f"audio covers {f} video frames; expected {vae_scale}*k+1")
    mid = audio_window // 2
    first = audio[:, :1]
    later = audio[:, 1:].reshape(b, (f - 1) // vae_scale, vae_scale, *audio.shape[2:])
    head = later[:, :, 0, : mid + 1]  # first video frame of the group: offsets -mid..0
    middle = later[:, :, 1:-1, mid]  # inner frames: offset 0 only
    tail = later[:, :, -1, mid:]  # last frame of the group: offsets 0..+mid
    return first, torch.cat([head, middle, tail], dim=2)


class AudioProjModel(nn.Module):
    """Projects each latent frame's audio windows to `context_tokens` tokens of width `output_dim`."""

    def __init__(
        self,
        seq_len: int = 5,
        seq_len_vf: int = 8,
        intermediate_dim: int = 512,
        output_dim: int = 768,
        context_tokens: int = 32,
        norm_output_audio: bool = True,
        audio_layers: int = AUDIO_LAYERS,
        audio_dim: int = AUDIO_CHANNELS,
    ) -> None:
        super().__init__()
        self.context_tokens = context_tokens
        self.output_dim = output_dim
        self.proj1 = nn.Linear(seq_len * audio_layers * audio_dim, intermediate_dim)
        self.proj1_vf = nn.Linear(seq_len_vf * audio_layers * audio_dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim) if norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first `[B, 1, W, 12, 768]`, later `[B, T-1, W', 12, 768]` -> `[B, T, context_tokens, output_dim]`."""
        b = first.shape[0]
        h_first = torch.relu(self.proj1(first.flatten(2)))
        h_later = torch.relu(self.proj1_vf(later.flatten(2)))
        h = torch.relu(self.proj2(torch.cat([h_first, h_later], dim=1)))
        tokens = self.proj3(h).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens).reshape(b, -1, self.context_tokens, self.output_dim)


def speaker_attention_map(
    q: torch.Tensor,
    k: torch.Tensor,
    frame_tokens: int,
    token_masks: torch.Tensor,
    head_splits: int = 2,
    query_chunk: int = 8192,
) -> torch.Tensor:
    """How strongly each visual token attends to each class region of the first latent frame.

    q, k `[B, L, N, C]` (after RoPE); token_masks `[classes, frame_tokens]` (0/1). For every class: softmax
    attention of each query to the first frame's keys, summed over the class's keys and divided by their
    count, averaged over heads within each of `head_splits` head groups, then over the groups.
    Returns `[B, classes, L]` in q's dtype. Queries are processed in chunks to bound memory.
    """
    b, l, n, c = q.shape
    masks = token_masks.to(device=q.device, dtype=q.dtype)
    counts = masks.sum(dim=-1)  # [classes]
    ref_k = k[:, :frame_tokens].transpose(1, 2)  # [B, N, Lr, C]
    scale = 1.0 / c**0.5
    per_group = n // head_splits
    out = torch.zeros(b, masks.shape[0], l, device=q.device, dtype=q.dtype)
    for g in range(head_splits):
        heads = slice(g * per_group, (g + 1) * per_group)
        kg = ref_k[:, heads]
        for start in range(0, l, query_chunk):
            qg = (q[:, start : start + query_chunk, heads] * scale).transpose(1, 2)  # [B, n', Lc, C]
            probs = (qg @ kg.transpose(-2, -1)).softmax(dim=-1)  # [B, n', Lc, Lr]
            per_class = (probs @ masks.transpose(0, 1)) / counts  # [B, n', Lc, classes]
            out[:, :, start : start + query_chunk] += per_class.mean(dim=1).transpose(1, 2)
    return out / head_splits


def _normalise(values: torch.Tensor, target: tuple[int, int], eps: float = 1e-8) -> torch.Tensor:
    lo = values.min(dim=-1, keepdim=True).values
    hi = values.max(dim=-1, keepdim=True).values
    return (values - lo) / (hi - lo + eps) * (target[1] - target[0]) + target[0]


def speaker_positions(x_ref_attn_map: torch.Tensor) -> torch.Tensor:
    """Map `[B, 3, L]` (person 1, person 2, background) -> 1D RoPE position of every visual token `[B, L]`.

    Each token takes the value of its arg-max class: person maps min-max normalised into their ranges,
    background fixed at 12.
    """
    p1 = _normalise(x_ref_attn_map[:, 0], SPEAKER1_RANGE)
    p2 = _normalise(x_ref_attn_map[:, 1], SPEAKER2_RANGE)
    back = torch.full_like(p1, BACKGROUND_POS)
    choice = x_ref_attn_map.argmax(dim=1, keepdim=True)  # [B, 1, L]
    return torch.stack([p1, p2, back], dim=1).gather(1, choice).squeeze(1)


def audio_key_positions(num_tokens: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """First half of a frame's audio tokens (person 1) sit at the middle of range 1, the rest at range 2's."""
    pos = torch.empty(num_tokens, device=device, dtype=dtype)
    pos[: num_tokens // 2] = sum(SPEAKER1_RANGE) / 2
    pos[num_tokens // 2 :] = sum(SPEAKER2_RANGE) / 2
    return pos


class AudioCrossAttention(nn.Module):
    """Visual tokens of each latent frame attend to that frame's audio tokens (all speakers concatenated)."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        audio_tokens: torch.Tensor,
        grid: tuple[int, int, int],
        x_ref_attn_map: torch.Tensor | None = None,
        human_num: int = 1,
        sp=None,
    ) -> torch.Tensor:
        """x `[B, L, C]`, audio_tokens `[B, T, A, audio_dim]` -> `[B, L, C]` (before the residual add).

        `sp` (sequence parallelism): x holds this rank's tokens, `x_ref_attn_map` covers the whole sequence."""
        b, l, c = x.shape
        t = grid[0]
        n, d = self.num_heads, self.head_dim
        s = l // t
        a = audio_tokens.shape[2]
        q = self.q_linear(x).view(b, l, n, d)
        kv = self.kv_linear(audio_tokens).view(b * t, a, 2, n, d)
        k, v = kv.unbind(2)
        if human_num > 1:
            if x_ref_attn_map is None:
                raise ValueError("two speakers need the speaker attention map (pass ref_target_masks)")
            q_pos = speaker_positions(x_ref_attn_map)  # [B, L]
            if sp is not None:  # positions are normalised over the whole sequence, then this rank's taken
                q_pos = sp.split(q_pos, dim=1)
            q = apply_rope_1d(q, rope_1d_angles(q_pos, d)[:, :, None, :])
            k_pos = audio_key_positions(a, k.device, k.dtype)
            k = apply_rope_1d(k, rope_1d_angles(k_pos, d)[:, None, :])
        if sp is not None:
            out = sp.audio_attention(q, k, v, t)
        else:
            out = attention(q.reshape(b * t, s, n, d), k, v)
        return self.proj(out.reshape(b, l, c))
