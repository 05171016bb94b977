"""The reducer's settings: clustering and labelling defaults, importable without numpy or sklearn
(the CLI shows them in --help)."""
from __future__ import annotations

from dataclasses import dataclass

# Clustering defaults: two clusters join when the RMS distance between their faces is at most
# CLUSTER_THRESHOLD, looking only at clusters linked by one of each face's CLUSTER_K nearest
# neighbours. On all of LFW (dlib descriptors) both pairwise F >= 0.94 and BCubed F >= 0.92
# hold for thresholds 0.505-0.525; the default is the middle (bench/lfw_reduce.py --sweep).
# It is below dlib's 0.6 pair threshold because it bounds the RMS over all pairs of two groups.
CLUSTER_THRESHOLD = 0.515
CLUSTER_K = 10
CLUSTER_MAX_EDGE = 0.9   # longer kNN edges never lead to a merge at this threshold; dropped early

# Quality floor (facejob/face/quality.py): cluster and label only faces with quality >= MIN_QUALITY,
# so tiny or blurred faces (which a strong detector finds) do not pollute identities. 0.5
# leaves out faces under 20 px and chips with Laplacian variance under 10 (on LFW View 1's
# photos, RetinaFace: 58 of 4,992 main faces). Faces of outputs written before the quality
# column have unknown quality and are kept. Every face stays searchable.
MIN_QUALITY = 0.5


@dataclass(frozen=True)
class LabelParams:
    """Labelling settings; saved with the models (labels/model.json) and used again by the next
    `facejob label` / `facejob reduce` unless given anew."""

    threshold: float = 0.5        # lowest probability at which a face gets a name
    C: float = 1.0                # SVM regularisation
    pool_size: int = 20_000       # background faces sampled from the archive
    pool_exclude: float = 0.4     # pool skips faces this close (Euclidean) to any labelled face
    extra_per_person: int = 200   # cluster-mates of a person's labelled faces used as positives
    holdout: float = 0.2          # share of the faces held out to fit the sigmoid
    seed: int = 0
