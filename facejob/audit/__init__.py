"""Robustness audit: how easily small pixel changes fool the recogniser (`facejob audit`).

    from facejob.audit import AuditConfig, lfw_pairs
    from facejob.audit.run import run_audit      # loads torch
    records = run_audit(lfw_pairs("lfw/pairsDevTest.txt", "lfw/images", limit=100), AuditConfig())

Modules: config (settings, names), pairs (which faces), faces (the indexing pipeline, one seam),
attacks (FGSM/PGD, on the chip or the whole photo), defences (jpeg, flip, jitter), run, cli.
"""
from facejob.audit.config import AuditConfig, AuditError
from facejob.audit.pairs import FaceRef, Pair, index_pairs, lfw_pairs

__all__ = ["AuditConfig", "AuditError", "FaceRef", "Pair", "index_pairs", "lfw_pairs"]
