"""The self-attention sublayer of one DiT block (q/k/v projections, RMS norms, RoPE, attention, output
projection) at the 480p shape, per attention backend, eager and compiled, to see what the fp8 quantisation
of q/k/v costs and how much of it Inductor fuses into the kernels producing q/k/v.

    PYTHONUNBUFFERED=1 python3 bench/fp8_attn_fusion.py --out $OUT/fusion.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import cuda_time, log, machine_info, write_json  # noqa: E402
from worker.engine.kernels import attention as attn_mod  # noqa: E402
from worker.engine.models.dit_blocks import SelfAttention  # noqa: E402
from worker.engine.kernels.fp8_attention import quantize, relative_error  # noqa: E402
from worker.engine.models.rope import real_rope_table, rope_3d_freqs  # noqa: E402

GRID = (21, 30, 52)  # 480x832x81 latent tokens: 32,760


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--backends", default="sdpa,fa3,fa3_fp8")
    args = ap.parse_args()
    torch.manual_seed(0)
    dim, heads = 5120, 40
    layer = SelfAttention(dim, heads).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn_like(p) * dim**-0.5)
            else:  # biases 0, RMS norm weights 1
                p.fill_(1.0 if name.startswith("norm_") else 0.0)
    l = GRID[0] * GRID[1] * GRID[2]
    x = torch.randn(1, l, dim, device="cuda", dtype=torch.bfloat16)
    freqs = rope_3d_freqs(GRID, dim // heads, "cuda")
    table = real_rope_table(freqs, torch.bfloat16)
    res = {"machine": machine_info(), "tokens": l, "results": {}}
    ref = None
    with torch.inference_mode():
        q = torch.randn(1, l, heads, 128, device="cuda", dtype=torch.bfloat16)
        res["quantize_qkv_eager"] = cuda_time(lambda: quantize(q, q, q), 2, 5)
        log("quantize q/k/v eager", res["quantize_qkv_eager"])
        for name in args.backends.split(","):
            if not attn_mod.backend_available(name):
                res["results"][name] = "not installed"
                continue
            attn_mod._backend = name
            rec = {"eager": cuda_time(lambda: layer(x, freqs, GRID[1] * GRID[2]), 2, 5)}
            torch._dynamo.reset()
            compiled = torch.compile(layer, dynamic=False)
            out = compiled(x, table, GRID[1] * GRID[2])[0]
            rec["compiled"] = cuda_time(lambda: compiled(x, table, GRID[1] * GRID[2]), 2, 5)
            if ref is None:
                ref = out.float()
            rec["rel_err_vs_first"] = relative_error(out.float(), ref)
            res["results"][name] = rec
            log(name, {k: (v["median_s"] if isinstance(v, dict) else v) for k, v in rec.items()})
            write_json(args.out, res)
    attn_mod._backend = "sdpa"
    write_json(args.out, res)


if __name__ == "__main__":
    main()
