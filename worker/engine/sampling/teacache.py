"""TeaCache: reuse a guidance branch's last block residual while the timestep input barely moves.

The DiT's blocks turn the patch embedding x into x + r; between neighbouring sampling steps r
changes little when the timestep modulation e0 changes little. TeaCache accumulates the relative L1
change of e0, |e0 - e0_prev|_1 / |e0_prev|_1, through a polynomial fitted upstream that maps it to
the expected relative change of the output, and skips the 40 blocks (reusing r) while the sum stays
under `thresh`; a computed forward resets the sum. The head still runs on x + r.

Facts taken from upstream InfiniteTalk (`teacache_init` with its default `use_ret_steps=True`):
the modulated input is e0 (the 6-way time projection), polynomial coefficients (highest degree
first) per model size below, and the first 5 sampling steps of every chunk are always computed.
State is kept per guidance branch (cond, drop_text, uncond, drop_audio), because each branch's
residual differs; their e0 is the same, so in practice all branches of a step decide alike.

`thresh <= 0` disables skipping outright: the fitted polynomial can go slightly negative, and a
zero threshold must mean "exactly the uncached run".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Upstream's rescale polynomials for the e0 input (use_ret_steps), highest degree first.
COEFFICIENTS = {
    "infinitetalk-480": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "infinitetalk-720": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}
RETAIN_STEPS = 5


def rescale(coefficients: Sequence[float], x: float) -> float:
    """Horner evaluation of the polynomial (numpy.poly1d order)."""
    acc = 0.0
    for c in coefficients:
        acc = acc * x + c
    return acc


@dataclass
class _Branch:
    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    residual: torch.Tensor | None = None


@dataclass
class TeaCache:
    """Per-chunk skip decisions; `reset()` at every chunk start (the residuals belong to one latent)."""

    thresh: float
    coefficients: tuple[float, ...] = COEFFICIENTS["infinitetalk-480"]
    retain_steps: int = RETAIN_STEPS
    step: int = 0
    computed: int = 0
    skipped: int = 0
    _branches: dict[str, _Branch] = field(default_factory=dict)

    @classmethod
    def for_model(cls, size: str, thresh: float) -> "TeaCache":
        try:
            coefficients = COEFFICIENTS[size]
        except KeyError:
            raise ValueError(f"no TeaCache coefficients for {size!r}; known: {sorted(COEFFICIENTS)}") from None
        return cls(thresh=float(thresh), coefficients=coefficients)

    def reset(self) -> None:
        self._branches.clear()
        self.step = 0

    def begin_step(self, step: int) -> None:
        self.step = step

    def wants_compute(self, branch: str, modulated: torch.Tensor) -> bool:
        """Record this step's e0 for `branch` and say whether its blocks must run."""
        st = self._branches.setdefault(branch, _Branch())
        cur = modulated.detach().float()
        prev, st.previous = st.previous, cur.clone()
        if self.thresh <= 0 or prev is None or st.residual is None or self.step < self.retain_steps:
            return True
        rel = float((cur - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
        st.accumulated += rescale(self.coefficients, rel)
        return st.accumulated >= self.thresh

    def store(self, branch: str, residual: torch.Tensor) -> None:
        """Blocks ran for `branch`: keep their residual, restart the accumulated distance."""
        st = self._branches.setdefault(branch, _Branch())
        st.residual = residual.detach().clone()
        st.accumulated = 0.0
        self.computed += 1

    def reuse(self, branch: str) -> torch.Tensor:
        self.skipped += 1
        residual = self._branches[branch].residual
        assert residual is not None
        return residual
