import pytest
import torch

from worker.engine.models.rope import apply_rope_3d, real_rope_table, rope_3d_freqs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_table_rotation_equals_complex_rotation(dtype):
    """The compiled DiT's real (cos, sin) table must rotate exactly as the eager complex table does."""
    gen = torch.Generator().manual_seed(3)
    freqs = rope_3d_freqs((3, 4, 5), 128, "cpu")
    x = torch.randn(2, 60, 4, 128, generator=gen).to(dtype)
    table = real_rope_table(freqs, torch.float64 if dtype == torch.float32 else torch.float32)
    assert table.shape == (60, 1, 64, 2) and not table.is_complex()
    torch.testing.assert_close(apply_rope_3d(x, table), apply_rope_3d(x, freqs), rtol=0, atol=0)
