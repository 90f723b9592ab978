"""The baseline of issue #8's quality target: the same DiT passes through the public diffusers Wan DiT.

`diffusers.WanTransformer3DModel` with the Wan2.1-I2V-14B configuration (no audio adapter: diffusers has
none), random bf16 weights, eager, its default attention processor (torch SDPA). Timed at batch 1 (one
pass) and batch 3 (the quality preset's three guidance passes of one step in one call, as our engine runs
them), 480x832x81. The quality chunk baseline is 40 x the batch-3 forward; run_suite's `quality` part gives
ours (40 x our batch-3 forward + the work outside the DiT, which the baseline leaves out: in its favour).

    PYTHONUNBUFFERED=1 python3 bench/diffusers_baseline.py --out $OUT/diffusers.json

diffusers is not a dependency of the project; on the device machine it travels as a wheel (bench/README.md).
"""
from __future__ import annotations

import argparse
import time

from common import GIB, cuda_time, log, machine_info, write_json

import torch

I2V_14B = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024,
)


def build(seed: int):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**I2V_14B)
    model = model.to(torch.bfloat16).to_empty(device="cuda").eval()
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, device="cuda") / p.shape[-1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    # The RoPE tables are non-persistent buffers computed in __init__: built on meta they hold garbage now,
    # so rebuild that one small module for real.
    rope = type(model.rope)(I2V_14B["attention_head_dim"], I2V_14B["patch_size"], I2V_14B["rope_max_seq_len"])
    model.rope = rope.to("cuda")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=2)
    args = ap.parse_args()
    res = {"machine": machine_info(), "config": {k: list(v) if isinstance(v, tuple) else v for k, v in I2V_14B.items()}}
    import diffusers

    res["diffusers"] = diffusers.__version__
    t0 = time.perf_counter()
    model = build(0)
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["params"] = sum(p.numel() for p in model.parameters())
    log("built", res["params"], "params in", res["build_s"], "s")
    gen = torch.Generator(device="cuda").manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 36, 21, 60, 104, device="cuda", dtype=torch.bfloat16, generator=gen)
        t = torch.full((batch,), 500, device="cuda", dtype=torch.long)
        ctx = torch.randn(batch, 512, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
        img = torch.randn(batch, 257, 1280, device="cuda", dtype=torch.bfloat16, generator=gen)

        def fwd():
            return model(x, t, ctx, img, return_dict=False)[0]

        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            out = fwd()
            tm = cuda_time(fwd, 0, args.iters)
        res[f"forward_batch{batch}"] = {**tm, "finite": bool(torch.isfinite(out).all()),
                                        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)}
        log(f"diffusers forward batch {batch}", res[f"forward_batch{batch}"])
        del x, ctx, img, out
        torch.cuda.empty_cache()
    res["quality_chunk_baseline_s"] = round(40 * res["forward_batch3"]["median_s"], 2)
    log("quality chunk baseline (40 x batch-3 forward)", res["quality_chunk_baseline_s"])
    write_json(args.out, res)


if __name__ == "__main__":
    main()
