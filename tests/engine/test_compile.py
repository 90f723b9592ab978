import torch

from worker.engine.kernels.compile import RealRope3DCache, compile_dit
from worker.engine.models.dit import DiTConfig, InfiniteTalkDiT


def _tiny() -> InfiniteTalkDiT:
    cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, text_len=8,
                    clip_dim=16, audio_layers=2, audio_dim=8, output_dim=16, intermediate_dim=16)
    with torch.device("meta"):
        return InfiniteTalkDiT(cfg)


def test_compile_keeps_state_dict_keys_and_swaps_rope_table():
    """Regional compile must not rename parameters (checkpoints, LoRA merging) and must give the
    blocks a real RoPE table; compilation itself is lazy, so nothing is compiled here."""
    dit = _tiny()
    keys = list(dit.state_dict())
    assert compile_dit(dit) is dit
    assert list(dit.state_dict()) == keys
    assert isinstance(dit._rope, RealRope3DCache)
    table = dit._rope.get((2, 2, 3), "cpu")
    assert table.dtype == torch.float64 and table.shape == (12, 1, 8, 2)
    assert compile_dit(dit) is dit  # idempotent
