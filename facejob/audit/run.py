"""The robustness audit: every (attack, goal, eps, defence) over a set of face pairs.

For each pair the probe photo's face is attacked, the reference stays as enrolled. Chip defences
see the adversarial chip (attacked directly, white-box). The transfer case attacks the probe's
photo through a differentiable copy of dlib's chip sampling (facejob.audit.attacks.PhotoWarp),
writes the perturbed photo as a PNG and sends those bytes through the indexing pipeline, which
detects, aligns and embeds it again. No attack knows about the defence it is measured against.
"""
from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig
from facejob.face.dlibport.resnet import TorchEmbedder

from . import attacks as atk
from .config import ATTACKS, CHIP_DEFENCES, GOALS, AuditConfig
from .defences import Defended
from .faces import AuditFace, box_of, load_face, load_model, photo_faces, pick
from .pairs import FaceRef, Pair

log = logging.getLogger(__name__)

EXAMPLES_PER_GOAL = 3


@dataclass
class Record:
    """One line of the audit. success_rate: share of pairs decided the attacker's way (a
    same-person pair at or above the threshold, a different-person pair below it; at eps 0
    that is the clean error rate). Distances are means over the pairs; in the transfer case a
    probe whose face is no longer found counts as dodged, never as impersonated, and has no
    distance (`faces_lost` counts them)."""

    attack: str
    goal: str
    eps: float
    defence: str
    pairs: int
    success_rate: float
    mean_distance_before: float
    mean_distance_after: float
    faces_lost: int = 0


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _record(attack: str, goal: str, eps: float, defence: str, before: np.ndarray, after: np.ndarray,
            threshold: float) -> Record:
    lost = np.isnan(after)
    won = (after >= threshold) | lost if goal == "dodging" else (after < threshold) & ~lost
    return Record(attack, goal, eps, defence, len(after), float(won.mean()) if len(after) else float("nan"),
                  float(before.mean()) if len(before) else float("nan"),
                  float(after[~lost].mean()) if (~lost).any() else float("nan"), int(lost.sum()))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


class _Audit:
    """The loaded models and the faces of one run."""

    def __init__(self, config: AuditConfig, model_config: ModelConfig, max_pixels: int) -> None:
        t = time.perf_counter()
        self.model = load_model(model_config, max_pixels)
        plain = TorchEmbedder(device=config.device, runtime="torch")  # attacks need torch's gradients
        self.device = plain.device
        self.batch = config.batch_size or (256 if self.device.type == "cuda" else 16)
        self.net = plain.model.net
        self.net.requires_grad_(False)   # gradients w.r.t. pixels only
        self.defended = Defended(plain, config.jpeg_quality, config.jitter_px)
        log.info("audit: models loaded in %.1f s (recogniser on %s, %d pairs per batch)",
                 time.perf_counter() - t, self.device, self.batch)

    def faces(self, pairs: list[Pair]) -> list[tuple[Pair, AuditFace, AuditFace]]:
        """The pairs whose two faces the pipeline finds, with those faces."""
        cache: dict[FaceRef, AuditFace | None] = {}
        out, missing = [], 0
        for p in pairs:
            for ref in (p.probe, p.reference):
                if ref not in cache:
                    cache[ref] = load_face(self.model, ref)
            a, b = cache[p.probe], cache[p.reference]
            if a is None or b is None:
                missing += 1
            else:
                out.append((p, a, b))
        if missing:
            log.warning("audit: %d of %d pairs left out: no face found in a photo", missing, len(pairs))
        return out

    def attack_chips(self, probes: np.ndarray, refs: torch.Tensor, goal: str, p: atk.AttackParams,
                     seed: int) -> np.ndarray:
        forward = atk.recogniser_forward(self.net)
        out = np.empty_like(probes)
        for s in range(0, len(probes), self.batch):
            g = torch.Generator().manual_seed(_seed(seed, s))
            x = atk.to_tensor(probes[s:s + self.batch], self.device)
            out[s:s + self.batch] = atk.to_uint8(atk.attack(forward, x, refs[s:s + self.batch], goal, p, g))
        return out

    def attack_photos(self, probes: list[AuditFace], refs: torch.Tensor, goal: str, p: atk.AttackParams,
                      seed: int) -> list[np.ndarray]:
        """Each probe's whole photo, attacked through its chip sampling (uint8, same size)."""
        crops = [atk.photo_crop(f.image, f.landmarks) for f in probes]
        photos = [f.image.copy() for f in probes]
        for level in sorted({c.level for c in crops}):
            rows = [i for i, c in enumerate(crops) if c.level == level]
            for s in range(0, len(rows), self.batch):
                idx = rows[s:s + self.batch]
                batch = [crops[i] for i in idx]
                warp = atk.PhotoWarp(self.net, batch, self.device)
                g = torch.Generator().manual_seed(_seed(seed, level + 1, s))
                adv = atk.to_uint8(atk.attack(warp, warp.padded(batch), refs[idx], goal, p, g, warp.mask(batch)))
                for i, c, a in zip(idx, batch, adv):
                    (x0, y0), (h, w) = c.origin, c.pixels.shape[:2]
                    photos[i][y0:y0 + h, x0:x0 + w] = a[:h, :w]
        return photos

    def through_pipeline(self, photos: list[np.ndarray], probes: list[AuditFace]) -> np.ndarray:
        """The perturbed photos' descriptors by the indexing pipeline (NaN rows: face lost)."""
        out = np.full((len(photos), 128), np.nan, np.float32)
        for i, (photo, f) in enumerate(zip(photos, probes)):
            found = pick(photo_faces(self.model, _png(photo)), box_of(f.box),
                         photo.shape, min_iou=0.3)
            if found is not None:
                out[i] = found.embedding
        return out


@dataclass
class _Goal:
    """One goal's pairs: the probe faces, the chips, and the reference side under each defence."""

    goal: str
    index: int
    chosen: list[tuple[AuditFace, AuditFace]]
    probe_chips: np.ndarray
    refs: dict[str, np.ndarray]       # defence -> (n, 128) reference descriptors
    before: dict[str, np.ndarray]     # defence -> (n,) clean distances
    target: torch.Tensor              # (n, 128) what the attacks aim at (or away from)
    jitter_seed: int
    unattacked: dict[str, np.ndarray]  # defence -> distances with no attack (eps < 1), measured once

    @property
    def probes(self) -> list[AuditFace]:
        return [a for a, _ in self.chosen]


def _goal(au: _Audit, cfg: AuditConfig, gi: int, goal: str, chosen: list[tuple[AuditFace, AuditFace]]) -> _Goal:
    probe_chips = np.stack([a.chip for a, _ in chosen])
    ref_chips = np.stack([b.chip for _, b in chosen])
    seed = {"probe": _seed(cfg.seed, gi, 1), "reference": _seed(cfg.seed, gi, 2)}
    chip_defences = [d for d in cfg.defences if d in CHIP_DEFENCES]
    refs = {d: au.defended.embed(d, ref_chips, seed["reference"]) for d in chip_defences}
    before = {d: np.linalg.norm(au.defended.embed(d, probe_chips, seed["probe"]) - refs[d], axis=1)
              for d in chip_defences}
    # the transfer case compares what the index stores: the pipeline's own descriptors
    refs["transfer"] = np.stack([b.embedding for _, b in chosen])
    before["transfer"] = np.linalg.norm(np.stack([a.embedding for a, _ in chosen]) - refs["transfer"], axis=1)
    target = torch.from_numpy(refs["none"] if "none" in refs else au.defended.plain.embed(ref_chips)).to(au.device)
    return _Goal(goal, gi, chosen, probe_chips, refs, before, target, seed["probe"], {})


def run_audit(pairs: list[Pair], config: AuditConfig = AuditConfig(), model_config: ModelConfig | None = None,
              examples: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Record]:
    """Attack every pair with every (attack, eps), measure it under every defence: one Record
    per (attack, goal, eps, defence). `model_config`, `max_pixels`: the pipeline of the transfer
    case (default: `facejob index --embedder torch`). `examples`: a folder for a few example images.
    Each (attack, eps) is logged as it completes, cheapest first."""
    t0 = time.perf_counter()
    cfg = config
    model_config = model_config or ModelConfig(embedder="torch", device=cfg.device)
    records: list[Record] = []
    shown: list[dict] = []
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):   # true fp32, as TorchEmbedder
        au = _Audit(cfg, model_config, max_pixels)
        usable = au.faces(pairs)
        goals = []
        for gi, goal in enumerate(GOALS):
            chosen = [(a, b) for p, a, b in usable if p.same == (goal == "dodging")]
            if chosen:
                goals.append(_goal(au, cfg, gi, goal, chosen))
        log.info("audit: faces of %d pairs found and measured clean in %.1f s", len(usable), time.perf_counter() - t0)
        for method in cfg.attacks:
            for eps in cfg.eps:
                for g in goals:
                    t = time.perf_counter()
                    new, adv, photos = _attack_goal(au, cfg, g, method, eps)
                    records += new
                    log.info("audit: %s %s eps %g, %d pairs, %.0f s: success (mean distance before -> after) %s",
                             method, g.goal, eps, len(g.chosen), time.perf_counter() - t,
                             ", ".join(f"{r.defence} {r.success_rate:.0%} ({r.mean_distance_before:.3f} -> "
                                       f"{r.mean_distance_after:.3f})" for r in new))
                    if examples is not None and eps == max(cfg.eps):
                        shown += _save_examples(Path(examples), method, g.goal, eps, g.chosen, adv, photos)
    if examples is not None and shown:
        (Path(examples) / "examples.json").write_text(json.dumps(shown, indent=1))
        log.info("audit: %d example images in %s", len(shown), examples)
    log.info("audit: %d records in %.1f s", len(records), time.perf_counter() - t0)
    return records


def _attack_goal(au: _Audit, cfg: AuditConfig, g: _Goal, method: str, eps: float
                 ) -> tuple[list[Record], np.ndarray, list[np.ndarray] | None]:
    """One (attack, eps) on one goal's pairs, measured under every defence; also the adversarial
    chips and photos."""
    p = atk.AttackParams(method, eps, cfg.pgd_steps, cfg.pgd_step, cfg.pgd_random_start)
    # seeded by the attack's name, not its place in the list: --attack pgd alone repeats a full run's PGD
    seed = _seed(cfg.seed, g.index, ATTACKS.index(method), round(eps * 1000))
    still = math.floor(eps) == 0   # below one grey level nothing changes: measure once
    adv = g.probe_chips if still else au.attack_chips(g.probe_chips, g.target, g.goal, p, seed)
    photos = None
    if "transfer" in cfg.defences:
        photos = [a.image for a in g.probes] if still else au.attack_photos(g.probes, g.target, g.goal, p, seed)
    out = []
    for d in cfg.defences:
        if still and d in g.unattacked:
            after = g.unattacked[d]
        elif d == "transfer":
            after = np.linalg.norm(au.through_pipeline(photos, g.probes) - g.refs[d], axis=1)
        else:
            after = np.linalg.norm(au.defended.embed(d, adv, g.jitter_seed) - g.refs[d], axis=1)
        if still:
            g.unattacked[d] = after
        out.append(_record(method, g.goal, eps, d, g.before[d], after, cfg.threshold))
    return out, adv, photos


def _strip(*panels: np.ndarray) -> Image.Image:
    """Images side by side (same height), 4 px apart on white."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + 4 * (len(panels) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for p in panels:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + 4
    return Image.fromarray(out)


def _amplified(adv: np.ndarray, orig: np.ndarray) -> np.ndarray:
    """The perturbation ×10 on mid-grey, so that ±1 grey level shows as ±10."""
    return np.clip(128 + 10 * (adv.astype(np.int16) - orig), 0, 255).astype(np.uint8)


def _save_examples(folder: Path, method: str, goal: str, eps: float, chosen: list[tuple[AuditFace, AuditFace]],
                   adv: np.ndarray, photos: list[np.ndarray] | None) -> list[dict]:
    """original | perturbation ×10 | adversarial | reference, for the first few pairs; the
    transfer case's whole photos too."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (a, b) in enumerate(chosen[:EXAMPLES_PER_GOAL]):
        stem = f"{method}-{goal}-eps{eps:g}-{i}"
        _strip(a.chip, _amplified(adv[i], a.chip), adv[i], b.chip).save(folder / f"{stem}-chip.png")
        entry = {"attack": method, "goal": goal, "eps": eps, "probe": a.uri, "reference": b.uri,
                 "chip": f"{stem}-chip.png", "panels": ["original", "perturbation x10", "adversarial", "reference"]}
        if photos is not None:
            _strip(a.image, _amplified(photos[i], a.image), photos[i]).save(folder / f"{stem}-photo.png")
            entry["photo"] = f"{stem}-photo.png"
        out.append(entry)
    return out


def records_json(records: list[Record]) -> str:
    return json.dumps([asdict(r) for r in records], indent=1)
