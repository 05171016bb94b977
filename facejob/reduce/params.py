"""The reducer's settings: clustering and labelling defaults, importable without numpy or sklearn
(the CLI shows them in --help)."""
from __future__ import annotations

from dataclasses import dataclass

# Clustering defaults: two clusters join when the RMS distance between their faces is at most
# CLUSTER_THRESHOLD - CLUSTER_PAIR_MARGIN / sqrt(n_a * n_b) (two single faces: 0.49; large
# groups: up to 0.53), looking only at clusters linked by one of each face's CLUSTER_K nearest
# neighbours. On all of LFW (RetinaFace + torch descriptors, bench/lfw_reduce.py) a flat 0.515
# gave pairwise F 0.953 / BCubed F 0.927: most errors were pairs and triples of different
# people joined on one short distance; 0.53 with the 0.04 margin gives 0.963 / 0.933
# (thresholds 0.525-0.54 with margins 0.03-0.07: pairwise F 0.955-0.963, BCubed F 0.932-0.934).
# It is below dlib's 0.6 pair threshold because it bounds the RMS over all pairs of two groups.
CLUSTER_THRESHOLD = 0.53
CLUSTER_PAIR_MARGIN = 0.04
CLUSTER_K = 10
CLUSTER_MAX_EDGE = 0.9   # longer kNN edges never lead to a merge at this threshold; dropped early

# Quality floor (facejob/quality.py): only faces with quality >= MIN_QUALITY seed clusters and
# train the SVMs; the others are still clustered (joined to the one cluster they are near) and
# named. From bench/quality_floor.py (all LFW + groups/, labelled/, no_face/, RetinaFace):
#   floor                          0.2     0.3     0.4     0.5
#   LFW subject faces (matchable)  0.03 %  0.15 %  0.46 %  0.96 %   dropped
#   hand-boxed / labelled faces    0.7 %   2.2 %   5.2 %   6.0 %
#   LFW bystander faces            15 %    18 %    21 %    24 %     (small, blurred, cut off)
#   false faces (no_face/, groups)  0 of 1 at any floor (a printed face on a mug, quality 1.0)
# The floor cannot catch false faces (the detector's thresholds do); it sorts out small and
# blurred ones. 0.3 keeps 99.85 % of LFW's matchable faces and 98 % of the group photos'
# hand-boxed ones while leaving out a fifth of the bystanders. Faces of outputs written before
# the quality column have unknown quality and seed.
MIN_QUALITY = 0.3


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
