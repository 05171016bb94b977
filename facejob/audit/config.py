"""The audit's settings (`facejob audit` flags mirror AuditConfig) and names; no torch here, so
building the command line stays quick."""
from __future__ import annotations

import math
from dataclasses import dataclass

GOALS = ("dodging", "impersonation")
ATTACKS = ("fgsm", "pgd")
CHIP_DEFENCES = ("none", "jpeg", "flip", "jitter")
DEFENCES = CHIP_DEFENCES + ("transfer",)
# dlib's ResNet was trained so that two photos of one person are closer than this.
THRESHOLD = 0.6


class AuditError(ValueError):
    """The audit cannot run as asked (the message says why)."""


@dataclass(frozen=True)
class AuditConfig:
    """What `facejob audit` measures (its flags mirror these).

    attacks: fgsm, pgd. eps: L∞ bounds in grey levels (0 = no attack: the clean error rate).
    defences: none, jpeg, flip, jitter, transfer. pgd_steps, pgd_step (a fraction of eps per
    step), pgd_random_start: PGD's settings. threshold: distance below which a pair matches.
    jpeg_quality, jitter_px: the defences' settings. device: auto (cuda if present), cpu, cuda.
    batch_size: pairs per attack batch (0 = 16 on CPU, 256 on a GPU). seed: PGD's random start,
    the jitter crops and index pair sampling.
    """

    attacks: tuple[str, ...] = ATTACKS
    eps: tuple[float, ...] = (0, 1, 2, 4, 8)
    defences: tuple[str, ...] = DEFENCES
    pgd_steps: int = 10
    pgd_step: float = 0.25
    pgd_random_start: bool = True
    threshold: float = THRESHOLD
    jpeg_quality: int = 75
    jitter_px: int = 4
    device: str = "auto"
    batch_size: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise AuditError(msg)

        need(bool(self.attacks) and set(self.attacks) <= set(ATTACKS), f"attacks must be among {ATTACKS}, got {self.attacks}")
        need(bool(self.defences) and set(self.defences) <= set(DEFENCES), f"defences must be among {DEFENCES}, got {self.defences}")
        need(bool(self.eps) and all(e >= 0 and math.isfinite(e) for e in self.eps), f"eps must be >= 0 grey levels, got {self.eps}")
        need(self.pgd_steps >= 1, f"pgd_steps must be >= 1, got {self.pgd_steps}")
        need(self.pgd_step > 0, f"pgd_step must be > 0 (a fraction of eps), got {self.pgd_step}")
        need(self.threshold > 0, f"threshold must be > 0, got {self.threshold}")
        need(1 <= self.jpeg_quality <= 95, f"jpeg_quality must be 1..95, got {self.jpeg_quality}")
        need(0 <= self.jitter_px <= 20, f"jitter_px must be 0..20, got {self.jitter_px}")
        need(self.batch_size >= 0, f"batch_size must be >= 0, got {self.batch_size}")
