"""Writes the htdemucs reference data that tests/engine/test_separation.py checks our network against.

Not part of the worker and not run by the tests: it needs the `demucs` package, which the repository does not
depend on. It was run once from a scratch install, outside the repository's environments:

    pip install --target /tmp/demucs-pkgs --no-deps demucs==4.1.0 openunmix einops julius
    PYTHONPATH=/tmp/demucs-pkgs:. .venv/bin/python tests/engine/data/make_htdemucs_reference.py

It writes, beside this file:
- htdemucs_keys.json: every state-dict key of `demucs.htdemucs.HTDemucs` at the published `htdemucs`
  configuration (4 sources, bottom_channels 512, residual branches in encoders and decoders (dconv_mode 3),
  5 transformer layers, 7.8 s segments) with its shape. (The published checkpoint itself could not be
  fetched from this machine; its configuration is from the project's training grid and from public ports
  that load the real file: decoder.N.dconv keys present, 512-wide transformer.)
- htdemucs_tiny_reference.safetensors (float16): the vocals stem that demucs computes with the tiny
  configuration (SeparationConfig.tiny()) and the seeded weights testkit.tiny.randomise(seed 19) gives our
  network (same keys, loaded by name), for
  one segment through the model's forward and for a 2.2 s track through `apply_model` (shifts=0, split,
  overlap 0.25) wrapped in the mono-mix normalisation of its separate command; and, at the published size
  with seeded weights the same way, the left channel (every 16th sample) of one 7.8 s segment's vocals. The input is
  testkit.tiny.isolation_test_signal, a formula, so nothing random is stored.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import torch
from safetensors.torch import save_file

from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs

from testkit.tiny import TINY_ISOLATION_SEED, isolation_test_signal, randomise
from worker.engine.models.separation import HTDemucs as OurHTDemucs, SeparationConfig

HERE = Path(__file__).resolve().parent


def reference_model(cfg: SeparationConfig) -> HTDemucs:
    return HTDemucs(sources=list(cfg.sources), audio_channels=cfg.audio_channels, channels=cfg.channels,
                    bottom_channels=cfg.bottom_channels, t_heads=cfg.t_heads, t_layers=cfg.t_layers, dconv_mode=3,
                    nfft=cfg.nfft, samplerate=cfg.samplerate,
                    segment=Fraction(cfg.segment_samples, cfg.samplerate)).eval()


def main() -> None:
    published = reference_model(SeparationConfig.published())
    keys = {k: list(v.shape) for k, v in published.state_dict().items()}
    (HERE / "htdemucs_keys.json").write_text(json.dumps(keys, indent=0) + "\n")

    cfg = SeparationConfig.tiny()
    model = reference_model(cfg)
    model.load_state_dict(randomise(OurHTDemucs(cfg), TINY_ISOLATION_SEED), strict=True)  # same keys, our order
    vocals = cfg.sources.index("vocals")
    with torch.no_grad():
        one = model(isolation_test_signal(cfg.segment_samples)[None])[0, vocals]
        track = isolation_test_signal(int(2.2 * cfg.samplerate))
        ref = track.mean(0)
        normed = (track - ref.mean()) / (ref.std() + 1e-8)
        stems = apply_model(model, normed[None], shifts=0, split=True, overlap=0.25, progress=False)[0]
        stems = stems * (ref.std() + 1e-8) + ref.mean()
        full_cfg = SeparationConfig.published()
        full = reference_model(full_cfg)
        full.load_state_dict(randomise(OurHTDemucs(full_cfg), TINY_ISOLATION_SEED), strict=True)
        full_one = full(isolation_test_signal(full_cfg.segment_samples)[None])[0, vocals]
    save_file({"forward_vocals": one.half().contiguous(), "separate_vocals": stems[vocals].half().contiguous(),
               "full_forward_vocals_left_every_16th": full_one[0, ::16].half().contiguous()},
              str(HERE / "htdemucs_tiny_reference.safetensors"))
    print(len(keys), "keys;", one.shape, stems.shape)


if __name__ == "__main__":
    main()
