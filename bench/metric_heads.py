"""Other metric heads over the descriptors, scored by `facejob eval`'s LFW protocol.

    python -m bench.metric_heads OUT --pairs lfw/pairsDevTrain.txt --images lfw/images
    python -m bench.metric_heads OUT --pairs bench/data/lfw_view2_pairs.txt --images lfw/images --heads plain,blend0.2

Same folds, same training people (per fold: the subject faces of the people of the other folds,
none of the tested fold's people) and same threshold rule as `facejob eval --learn-metric`; only
the map from descriptors to compared vectors changes. Heads (all fitted per fold):

    plain       the descriptors, Euclidean (what `facejob eval` reports as plain)
    cosine      the descriptors, cosine; centred-cosine: minus the training mean first
    wccnA       within-class covariance normalisation, Sw shrunk toward isotropic by A
    kissmeA     KISSME (Sw^-1 - St^-1, clipped to PSD), Sw shrunk by A
    blendT      partial WCCN: M = (1 - T) I / s + T Sw^-1 (s: mean within-class variance)
    pairsR      a linear head y = x + Ax + c trained with a logistic loss on same-person pairs and
                each face's 5 nearest other-person faces (LDML-style), ridge R toward identity

Parameters were picked on View 1 pairsDevTrain. Prints accuracy ± std over the 10 folds.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from facejob.io.storage import open_store
from facejob.reduce.evaluate import centre_faces, fold_accuracy, read_pairs


def _scatter(x: np.ndarray, p: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    groups = [g for g in (np.flatnonzero(p == i) for i in np.unique(p)) if len(g) >= 2]
    sw = sum((x[g] - x[g].mean(0)).T @ (x[g] - x[g].mean(0)) for g in groups) / sum(len(g) - 1 for g in groups)
    d = x.shape[1]
    sw = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
    return sw, np.cov(x.T)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return v @ np.diag(np.sqrt(np.maximum(w, 0))) @ v.T


def _pairs_head(x: np.ndarray, p: np.ndarray, steps: int = 120, reg: float = 1e-2, negatives: int = 5):
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pos = []
    for g in (np.flatnonzero(p == i) for i in np.unique(p)):
        i, j = np.triu_indices(len(g), 1)
        keep = rng.permutation(len(i))[:20]
        pos.append(np.stack([g[i[keep]], g[j[keep]]], 1))
    pos = torch.from_numpy(np.concatenate(pos))
    xt, pt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(p)
    neg = []
    for lo in range(0, len(x), 2048):           # each face's nearest other-person faces
        d = torch.cdist(xt[lo:lo + 2048], xt)
        d[pt[lo:lo + 2048, None] == pt[None, :]] = float("inf")
        nn = d.topk(negatives, largest=False).indices
        neg.append(torch.stack([torch.arange(lo, lo + len(nn)).repeat_interleave(negatives), nn.reshape(-1)], 1))
    neg = torch.cat(neg)
    dim = x.shape[1]
    a, c = torch.zeros(dim, dim, requires_grad=True), torch.zeros(dim, requires_grad=True)
    b = torch.tensor(0.36, requires_grad=True)  # squared distance threshold, dlib's 0.6
    opt = torch.optim.Adam([a, c, b], lr=5e-3)
    sp = torch.nn.functional.softplus
    for _ in range(steps):
        y = xt + xt @ a + c
        dp = ((y[pos[:, 0]] - y[pos[:, 1]]) ** 2).sum(1)
        dn = ((y[neg[:, 0]] - y[neg[:, 1]]) ** 2).sum(1)
        loss = sp(20 * (dp - b)).mean() + sp(20 * (b - dn)).mean() + reg * ((a ** 2).sum() + (c ** 2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    an, cn = a.detach().numpy(), c.detach().numpy()
    return lambda e: e + e @ an + cn


def head(name: str):
    """fit(x, people) -> (map, cosine?) for a head name (see the module docstring)."""
    if name == "plain":
        return lambda x, p: (lambda e: e, False)
    if name == "cosine":
        return lambda x, p: (lambda e: e, True)
    if name == "centred-cosine":
        return lambda x, p: (lambda e, m=x.mean(0): e - m, True)
    if name.startswith("pairs"):
        return lambda x, p: (_pairs_head(x, p, reg=float(name[5:])), False)
    for prefix in ("wccn", "kissme", "blend"):
        if name.startswith(prefix):
            v = float(name[len(prefix):])

            def fit(x, p, prefix=prefix, v=v):
                if prefix == "blend":
                    sw, _ = _scatter(x, p, 0.0)
                    s = np.trace(sw) / len(sw)
                    m = (1 - v) * np.eye(len(sw)) / s + v * np.linalg.inv(sw)
                else:
                    sw, st = _scatter(x, p, v)
                    m = np.linalg.inv(sw) - (np.linalg.inv(st) if prefix == "kissme" else 0)
                lm = _sqrt_psd(m)
                return (lambda e: e @ lm), False
            return fit
    raise SystemExit(f"unknown head {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--heads", default="plain,cosine,centred-cosine,wccn0.1,wccn0.4,kissme0.3,blend0.2,pairs0.3")
    a = ap.parse_args()
    row_of, emb, rel = centre_faces(open_store(a.out), Path(a.images))
    P = read_pairs(a.pairs)
    ra = np.array([row_of.get(x, -1) for x in P.a])
    rb = np.array([row_of.get(x, -1) for x in P.b])
    ok = (ra >= 0) & (rb >= 0)
    person = np.array([k.split("/", 1)[0] if k else "" for k in rel])
    subject = np.zeros(len(rel), bool)
    subject[list(row_of.values())] = True
    _, pid = np.unique(person, return_inverse=True)
    people_in = [set() for _ in range(10)]
    for x, y, k in zip(P.a, P.b, P.fold):
        people_in[k] |= {x.split("/", 1)[0], y.split("/", 1)[0]}
    for name in a.heads.split(","):
        t0, acc = time.perf_counter(), np.empty(10)
        for k in range(10):
            train = set().union(*(people_in[j] for j in range(10) if j != k)) - people_in[k]
            use = subject & np.isin(person, sorted(train))
            f, cos = head(name)(emb[use], pid[use])
            y = f(emb).astype(np.float64)
            if cos:
                y /= np.linalg.norm(y, axis=1, keepdims=True)
            d = np.full(len(P.same), np.inf)
            d[ok] = np.linalg.norm(y[ra[ok]] - y[rb[ok]], axis=1)
            acc[k] = fold_accuracy(d, P.same, P.fold)[k]
        print(f"{name:16s} {acc.mean() * 100:6.2f} % ± {acc.std() * 100:.2f}  ({time.perf_counter() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
