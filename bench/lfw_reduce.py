"""Clustering and labelling quality on all 13,233 LFW images, with baselines, in one run.

    facejob index /work/shared/data/lfw/images --out /tmp/lfw_out     # dlib descriptors (once)
    nice -n 5 .venv/bin/python -m bench.lfw_reduce /tmp/lfw_out [--full-linkage] [--sweep]

Identity = the image's folder name; when an image has several faces, the one nearest the
image centre is LFW's subject. Images where no face was found count as clusters of their own
("all images" rows) and are also left out ("detected" rows).

Clustering, same descriptors, same run:
  facejob        the reducer's defaults: average linkage over the hnswlib kNN graph
  chinese whisp. dlib.chinese_whispers_clustering at 0.5 (face_recognition / dlib example)
  DBSCAN         sklearn, eps 0.5-0.6, min_samples 3-4 (photo-manager settings; noise = singletons)
  avg-linkage    (--full-linkage) scipy all-pairs UPGMA, n^2 memory, at its best threshold
Reports pairwise precision / recall / F and BCubed F. --subsets: the same on small archives
(a few LFW people each), the default criterion beside RMS linkage alone.

Duplicates (--dedup): `facejob dedup` on the whole LFW archive plus, for 100 random LFW
photos, three copies each (JPEG quality 60, resized to 70 %, cropped 8 % on every side),
embedded by the same FaceModel: recall = copies grouped with their original; the groups found
among the original 13,233 photos are listed (LFW holds real copies: one press photo cropped
around each person in it, and two byte-identical files filed under different names).

Labelling (the issue's protocol): the 158 people with >= 10 images get their first 5 images
(by file name) labelled; the rest of their images must get their name, and the 4,069
people with a single image (distractors) must come out `unknown`. facejob's SVMs at the
default threshold against 1-nearest-neighbour at 0.6 and 0.5 (face_recognition's way).
The SVMs' background pool is the archive itself (all LFW faces, which include the
distractors); a second row holds half of the distractors out of the pool and measures
rejection on that half only (and the other way round), so no distractor was seen in training.
"""
from __future__ import annotations

import argparse
import collections
import functools
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from facejob.io.storage import LocalStore

# ---------------------------------------------------------------------------- data

def load_lfw(out: str) -> dict:
    """Per LFW image: identity, and the descriptor of the face nearest the image centre (or none)."""
    from facejob.reduce.embeddings import read_faces, read_images

    store = LocalStore(out)
    images = read_images(store, ["uri", "width", "height", "status"])
    faces = read_faces(store, ["face_id", "uri", "left", "top", "right", "bottom", "quality"])
    uri = images.column("uri").to_pylist()
    w = images.column("width").to_numpy(zero_copy_only=False)
    h = images.column("height").to_numpy(zero_copy_only=False)
    img_of = {u: i for i, u in enumerate(uri)}
    fu = faces.meta.column("uri").to_pylist()
    cx = (pc.add(faces.meta.column("left"), faces.meta.column("right")).to_numpy() / 2.0)
    cy = (pc.add(faces.meta.column("top"), faces.meta.column("bottom")).to_numpy() / 2.0)
    best: dict[int, tuple[float, int]] = {}
    for r, u in enumerate(fu):
        i = img_of.get(u)
        if i is None:
            continue
        d = (cx[r] - w[i] / 2) ** 2 + (cy[r] - h[i] / 2) ** 2
        if i not in best or d < best[i][0]:
            best[i] = (d, r)
    order = sorted(range(len(uri)), key=lambda i: uri[i])
    ident = [Path(uri[i]).parent.name for i in order]
    row = np.array([best[i][1] if i in best else -1 for i in order])
    return {"uri": [uri[i] for i in order], "identity": np.array(ident), "row": row,
            "emb": faces.embeddings, "n_faces_total": len(faces), "face_uri": fu,
            "quality": faces.meta.column("quality").to_numpy(zero_copy_only=False).astype(np.float64)}


# ------------------------------------------------------------------------- metrics

def scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Pairwise P/R/F and BCubed P/R/F of a clustering `pred` against labels `truth`."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    _, j = np.unique(t.astype(np.int64) * (p.max() + 1) + p, return_inverse=True)
    nj, nt, np_ = np.bincount(j), np.bincount(t), np.bincount(p)
    pairs = lambda c: float((c.astype(np.float64) * (c - 1) / 2).sum())
    tp, pp, tt = pairs(nj), pairs(np_), pairs(nt)
    P, R = tp / max(pp, 1), tp / max(tt, 1)
    # BCubed: per item, the share of its cluster that is its person, and of its person in its cluster.
    bp, br = float(np.mean(nj[j] / np_[p])), float(np.mean(nj[j] / nt[t]))
    return {"P": P, "R": R, "F": 2 * P * R / max(P + R, 1e-12), "bP": bp, "bR": br, "bF": 2 * bp * br / max(bp + br, 1e-12)}


def with_missing(labels_detected: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Cluster labels for all images: undetected images become singletons."""
    out = np.empty(len(detected), np.int64)
    _, lab = np.unique(labels_detected, return_inverse=True)
    out[detected] = lab
    out[~detected] = lab.max() + 1 + np.arange((~detected).sum()) if len(lab) else np.arange((~detected).sum())
    return out


# ---------------------------------------------------------------------- clusterers

def facejob_clusters(x: np.ndarray, threshold: float | None = None, k: int | None = None,
                     uris: list[str] | None = None, seeds: np.ndarray | None = None,
                     pair_margin: float | None = None, names: dict[int, str] | None = None,
                     link_weight: float | None = None) -> tuple[np.ndarray, dict]:
    """facejob's clustering of the rows of x; `uris` (the photo of each row) makes faces of one
    photo cannot-link, as in `facejob cluster`; without them every row is its own photo.
    `seeds` (default all): the rows that seed clusters; the others join one afterwards.
    `names` (row -> name): the curator's labels, as `facejob cluster` applies stored labels."""
    import pyarrow as pa

    from facejob.config import CLUSTER_K, CLUSTER_LINK_WEIGHT, CLUSTER_PAIR_MARGIN, CLUSTER_THRESHOLD
    from facejob.reduce.clustering import cluster_faces
    from facejob.reduce.embeddings import Faces
    from facejob.reduce.hnsw import FaceIndex, IndexParams, build

    params = IndexParams()
    t0 = time.perf_counter()
    fi = FaceIndex(build(x, params), pa.table({"face_id": [str(i) for i in range(len(x))],
                                               "deleted": np.zeros(len(x), bool)}), params)
    faces = Faces(pa.table({"face_id": [str(i) for i in range(len(x))],
                            "uri": uris if uris is not None else [str(i) for i in range(len(x))]}), x)
    t1 = time.perf_counter()
    applied = None
    if names:
        from facejob.reduce import corrections as corr

        must, cannot = corr.name_pairs({str(r): n for r, n in names.items()}, corr.Applied())
        applied = corr.Applied(must=must, cannot=cannot)
        seeds = (np.ones(len(x), bool) if seeds is None else seeds.copy())
        seeds[list(names)] = True       # as in `facejob cluster`: a labelled face seeds whatever its quality
    roots, stats = cluster_faces(fi, faces, threshold or CLUSTER_THRESHOLD, k or CLUSTER_K, seeds=seeds, applied=applied,
                                 pair_margin=CLUSTER_PAIR_MARGIN if pair_margin is None else pair_margin,
                                 link_weight=CLUSTER_LINK_WEIGHT if link_weight is None else link_weight)
    stats["index_s"] = round(t1 - t0, 2)
    stats["total_s"] = round(time.perf_counter() - t0, 2)
    return roots, stats


def chinese_whispers(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    import dlib

    return np.array(dlib.chinese_whispers_clustering([dlib.vector(v.astype(float).tolist()) for v in x], threshold))


def dbscan(x: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    lab = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
    noise = lab < 0
    lab[noise] = lab.max() + 1 + np.arange(noise.sum())      # noise points: clusters of one
    return lab


def full_average_linkage(x: np.ndarray, thresholds) -> dict[float, np.ndarray]:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    Z = linkage(pdist(x.astype(np.float64)), "average")
    return {t: fcluster(Z, t, "distance") for t in thresholds}


def run_subsets(d: dict, draws: int = 5, seed: int = 0) -> None:
    """`facejob cluster` on small archives: all photos of a few LFW people drawn at random
    (people with fewer than 60 photos, so no draw is dominated by one of the big five), with
    the default criterion and with RMS alone (link weight 0 at the earlier threshold 0.53)."""
    from facejob.config import MIN_QUALITY

    ident, row, face_uri = d["identity"], d["row"], np.array(d["face_uri"])
    count = collections.Counter(ident)
    good = ~(d["quality"] < MIN_QUALITY)
    rng = np.random.default_rng(seed)
    print(f"\nsmall archives ({draws} draws each; scored on the subject faces): pairwise F / BCubed F, mean (lowest F)")
    for people, least in ((3, 5), (10, 2), (30, 1), (100, 1), (400, 1)):
        pool = sorted(n for n, c in count.items() if least <= c < 60)
        got: dict[str, list[tuple[float, float]]] = {"default": [], "RMS alone": []}
        for _ in range(draws):
            chosen = set(rng.choice(pool, people, replace=False).tolist())
            img = np.flatnonzero([n in chosen for n in ident])
            faces = np.flatnonzero(np.isin(face_uri, np.array(d["uri"])[img]))
            pos = np.full(len(face_uri), -1)
            pos[faces] = np.arange(len(faces))
            for name, link, t in (("default", None, None), ("RMS alone", 0.0, 0.53)):
                lab, _ = facejob_clusters(d["emb"][faces], t, uris=list(face_uri[faces]),
                                          seeds=good[faces], link_weight=link)
                s = scores(ident[img], lab[pos[row[img]]])
                got[name].append((s["F"], s["bF"]))
        print(f"  {people:3d} people with {least}+ photos (~{len(img)} photos): " + "; ".join(
            f"{name} {np.mean([f for f, _ in v]):.3f} / {np.mean([b for _, b in v]):.3f} ({min(f for f, _ in v):.3f})"
            for name, v in got.items()))


# ------------------------------------------------------------------------ labelling

def label_protocol(d: dict) -> dict:
    ident = d["identity"]
    count = collections.Counter(ident)
    known = sorted(n for n, c in count.items() if c >= 10)
    lab_idx, test_idx = [], []
    for n in known:
        imgs = np.flatnonzero(ident == n)        # sorted by uri = by file name
        lab_idx += list(imgs[:5])
        test_idx += list(imgs[5:])
    distract = np.flatnonzero(np.array([count[n] == 1 for n in ident]))
    return {"known": known, "lab": np.array(lab_idx), "test": np.array(test_idx), "distract": distract}


def nn_baseline(xl, yl, xq, threshold):
    d = np.sqrt(np.maximum((xq * xq).sum(1)[:, None] + (xl * xl).sum(1)[None] - 2 * xq @ xl.T, 0))
    j = d.argmin(1)
    return np.where(d[np.arange(len(xq)), j] <= threshold, yl[j], "unknown")


def _names(model, x):
    return model.predict(x)[0]


def rates(pred_test, truth_test, pred_dis) -> tuple[float, float]:
    return float(np.mean(pred_test == truth_test)), float(np.mean(pred_dis == "unknown"))


def run_labelling(d: dict, clusters_all: np.ndarray) -> tuple[list[tuple[str, float, float]], dict]:
    """`clusters_all`: cluster per face of the archive (every face found), as `facejob cluster` makes them."""
    from facejob.reduce import svm

    P = label_protocol(d)
    ident, row, emb = d["identity"], d["row"], d["emb"]
    det = row >= 0
    lab = P["lab"][det[P["lab"]]]
    xl, yl = emb[row[lab]], ident[lab]
    # Scored on images where a face was found (the others have nothing to name); counts printed.
    test, dis = P["test"][det[P["test"]]], P["distract"][det[P["distract"]]]
    P["test_detected"], P["distract_detected"] = len(test), len(dis)
    truth_test = ident[test]

    def predict(fn, idx):
        out = np.full(len(idx), "unknown", object)
        ok = det[idx]
        out[ok] = fn(emb[row[idx[ok]]])
        return out

    results = []
    for t in (0.6, 0.5):
        nn = functools.partial(nn_baseline, xl, yl, threshold=t)
        pt, pd = predict(nn, test), predict(nn, dis)
        results.append((f"1-NN at {t}", *rates(pt, truth_test, pd)))

    # The archive = every face found on LFW (bystanders too), as `facejob label` sees it: all
    # are named, only those at or above the quality floor train (background, cluster-mates).
    from facejob.config import MIN_QUALITY

    x_all = emb
    good = ~(d["quality"] < MIN_QUALITY)
    photo_of_face = np.array(d["face_uri"])
    uri_img = np.array(d["uri"])
    params = svm.LabelParams()

    def svm_run(hidden: np.ndarray) -> svm.Model:
        """facejob's training on the archive minus the images `hidden` (never seen in training)."""
        keep = ~np.isin(photo_of_face, uri_img[hidden]) if len(hidden) else np.ones(len(x_all), bool)
        # The archive without the hidden images is clustered afresh, as `facejob reduce` would.
        cl = clusters_all if keep.all() else facejob_clusters(
            x_all[keep], uris=list(photo_of_face[keep]), seeds=good[keep])[0]
        cl = cl[good[keep]]
        sub = np.flatnonzero(keep & good)
        remap = -np.ones(len(x_all), np.int64)
        remap[sub] = np.arange(len(sub))
        model, _ = svm.fit_archive(x_all[sub], remap[row[lab]], xl, list(yl), cl, params)
        return model

    t0 = time.perf_counter()
    m = svm_run(np.array([], np.int64))
    secs = time.perf_counter() - t0
    pt, pd = predict(functools.partial(_names, m), test), predict(functools.partial(_names, m), dis)
    results.append((f"facejob SVMs, pool = whole archive ({secs:.0f} s)", *rates(pt, truth_test, pd)))
    # The trade-off: the same models with other thresholds (only the default is the product's).
    for t in (0.3, 0.4, 0.6, 0.7):
        mt = svm.Model(m.classes, m.coef, m.intercept, m.platt, svm.LabelParams(threshold=t), m.info)
        name = functools.partial(_names, mt)
        results.append((f"  same models, threshold {t}", *rates(predict(name, test), truth_test, predict(name, dis))))
    # Held-out strangers: half the distractors are not in the archive at all (no pool, no
    # clusters); rejection is measured on that half, then the other way round.
    rng = np.random.default_rng(0)
    acc, rej = [], []
    for h in np.array_split(rng.permutation(dis), 2):
        m = svm_run(h)
        name = functools.partial(_names, m)
        a, r = rates(predict(name, test), truth_test, predict(name, h))
        acc.append(a); rej.append(r)
    results.append(("facejob SVMs, distractors unseen in training", float(np.mean(acc)), float(np.mean(rej))))
    results.append((f"  (default threshold: probability >= {params.threshold}; Platt a={m.platt[0]:.2f} b={m.platt[1]:.2f})",
                    float("nan"), float("nan")))
    return results, P


def run_sizes(d: dict, fractions: list[float]) -> None:
    """The labelling protocol on archives of different sizes: the known people's photos plus a
    share of the other photos; half the distractors are never in any archive and are the ones
    scored, so only the archive's size changes between rows."""
    from facejob.reduce import svm
    from facejob.config import MIN_QUALITY

    P = label_protocol(d)
    ident, row, emb = d["identity"], d["row"], d["emb"]
    good = ~(d["quality"] < MIN_QUALITY)
    photo, uri_img = np.array(d["face_uri"]), np.array(d["uri"])
    known = np.concatenate([P["lab"], P["test"]])
    rng = np.random.default_rng(0)
    unseen = rng.permutation(P["distract"])[: len(P["distract"]) // 2]
    other = rng.permutation(np.setdiff1d(np.arange(len(ident)), np.concatenate([known, unseen])))
    print("\nlabelling vs archive size (threshold 0.5; distractors scored are never in the archive)")
    for frac in fractions:
        keep = np.isin(photo, uri_img[np.concatenate([known, other[: int(len(other) * frac)]])])
        cl = facejob_clusters(emb[keep], uris=list(photo[keep]), seeds=good[keep])[0][good[keep]]
        sub = np.flatnonzero(keep & good)
        remap = -np.ones(len(emb), np.int64)
        remap[sub] = np.arange(len(sub))
        m, fit = svm.fit_archive(emb[sub], remap[row[P["lab"]]], emb[row[P["lab"]]], list(ident[P["lab"]]), cl,
                                 svm.LabelParams())
        pt, pd = m.predict(emb[row[P["test"]]])[0], m.predict(emb[row[unseen]])[0]
        print(f"  {frac:5.0%} of the other photos: archive {keep.sum():6d} faces, pool {len(fit['pool']):5d}: "
              f"known {np.mean(pt == ident[P['test']]):.4f}, distractors rejected {np.mean(pd == 'unknown'):.4f} "
              f"(Platt a={m.platt[0]:.2f} b={m.platt[1]:.2f})")


# ------------------------------------------------------------------------------ dedup

def run_dedup(lfw_out: str, n: int = 100, seed: int = 0) -> None:
    import io
    import random
    import shutil
    import tempfile

    from PIL import Image

    from facejob.config import ModelConfig
    from facejob.indexing.pipeline import FaceModel, shard_tables
    from facejob.reduce import dedup
    from facejob.io.sources import ImageRef
    from facejob.io.storage import write_parquet

    tmp = Path(tempfile.mkdtemp(prefix="lfw_dedup_"))
    try:
        out = tmp / "out"
        for sub in ("faces", "images"):
            shutil.copytree(Path(lfw_out) / sub, out / sub)
        shutil.copy(Path(lfw_out) / "run.json", out / "run.json")
        pipe = FaceModel(ModelConfig.load(LocalStore(out)))
        rng = random.Random(seed)
        images = LocalStore(out)
        from facejob.reduce.embeddings import read_images
        uris = sorted(read_images(images, ["uri"]).column("uri").to_pylist())
        originals = rng.sample(uris, n)
        refs, results = [], []
        copies_of: dict[str, list[str]] = {}
        t0 = time.perf_counter()
        for k, uri in enumerate(originals):
            img = Image.open(uri).convert("RGB")
            w, h = img.size
            variants = {"q60.jpg": (img, 60), "small.jpg": (img.resize((w * 7 // 10, h * 7 // 10), Image.LANCZOS), 90),
                        "crop.jpg": (img.crop((w * 8 // 100, h * 8 // 100, w - w * 8 // 100, h - h * 8 // 100)), 90)}
            for name, (v, q) in variants.items():
                path = tmp / "copies" / f"{k:03d}_{name}"
                path.parent.mkdir(exist_ok=True)
                buf = io.BytesIO()
                v.save(buf, "JPEG", quality=q)
                path.write_bytes(buf.getvalue())
                refs.append(ImageRef(str(path), path.stat().st_size, mtime=path.stat().st_mtime))
                results.append(pipe.process_bytes(buf.getvalue()))
                copies_of.setdefault(uri, []).append(str(path))
        imgs, faces = shard_tables(refs, results, "copies", pipe.detector.name, pipe.embedder.name)
        write_parquet(images, "faces/part-copies.parquet", faces)
        write_parquet(images, "images/part-copies.parquet", imgs)
        t_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        s = dedup(str(out))
        t_dedup = time.perf_counter() - t0
        rows = pq_rows(out / "duplicates.parquet")
        group_of = {r["uri"]: r["group"] for r in rows}
        found = sum(group_of.get(c) is not None and group_of.get(c) == group_of.get(o)
                    for o, cs in copies_of.items() for c in cs)
        no_face = sum(not r.faces for r in results)
        per_kind = {}
        for o, cs in copies_of.items():
            for c in cs:
                kind = c.rsplit("_", 1)[1]
                ok = group_of.get(c) is not None and group_of.get(c) == group_of.get(o)
                per_kind.setdefault(kind, []).append(ok)
        print(f"\ndedup on LFW + {len(refs)} copies of {n} random LFW photos (embedded in {t_embed:.0f} s; "
              f"{no_face} copies had no face found): dedup took {t_dedup:.1f} s, compared {s.candidates} photo pairs")
        print(f"  copies grouped with their original: {found}/{len(refs)} "
              + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(per_kind.items())))
        lfw_groups: dict[int, list[dict]] = {}
        copy_paths = {c for cs in copies_of.values() for c in cs}
        for r in rows:
            lfw_groups.setdefault(r["group"], []).append(r)
        only_lfw = [g for g in lfw_groups.values() if not any(r["uri"] in copy_paths for r in g)]
        mixed = [g for g in lfw_groups.values() if any(r["uri"] in copy_paths for r in g)
                 and len({Path(r["uri"]).name for r in g if r["uri"] not in copy_paths}) > 1]
        print(f"  groups among the original LFW photos: {len(only_lfw)} "
              f"({sum(g[0]['kind'] == 'identical' for g in only_lfw)} byte-identical); "
              f"copy groups that also took in another LFW photo: {len(mixed)}")
        for g in only_lfw:
            print("   ", g[0]["kind"], " = ".join(Path(r["uri"]).name + ("*" if r["keep"] else "") for r in g))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pq_rows(path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# ------------------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="facejob index output of the LFW images")
    ap.add_argument("--full-linkage", action="store_true", help="also run all-pairs average linkage (n^2)")
    ap.add_argument("--sweep", action="store_true", help="also sweep facejob's threshold and k")
    ap.add_argument("--no-label", action="store_true")
    ap.add_argument("--no-baselines", action="store_true", help="skip chinese whispers and DBSCAN")
    ap.add_argument("--sizes", default="", help="also label archives holding these shares of the other photos, "
                                                "e.g. 0.05,0.25,1 (does 'unknown' mean the same at every size?)")
    ap.add_argument("--dedup", action="store_true", help="also measure near-duplicate detection (embeds 300 copies)")
    ap.add_argument("--subsets", action="store_true", help="also cluster small archives (a few LFW people each)")
    args = ap.parse_args()

    d = load_lfw(args.out)
    det = d["row"] >= 0
    truth_all = d["identity"]
    x = d["emb"][d["row"][det]]
    truth = truth_all[det]
    print(f"LFW: {len(truth_all)} images of {len(set(truth_all))} people; face found in {det.sum()} "
          f"({(~det).sum()} without a face count as singletons in the 'all' columns)")

    rows = []

    def add(name, labels, secs):
        a = scores(truth_all, with_missing(labels, det))
        b = scores(truth, labels)
        rows.append((name, a, b, len(np.unique(labels)), secs))

    t0 = time.perf_counter()
    ours, st = facejob_clusters(x)
    add("facejob (avg linkage on kNN graph)", ours, time.perf_counter() - t0)
    print(f"  facejob: {st}")
    # What `facejob cluster` does: every face of the archive (also the bystanders of an LFW
    # photo), faces of one photo cannot-link; scored on each image's subject face.
    t0 = time.perf_counter()
    from facejob.config import MIN_QUALITY

    seeds = ~(d["quality"] < MIN_QUALITY)
    every, st_all = facejob_clusters(d["emb"], uris=d["face_uri"], seeds=seeds)
    add("facejob cluster (all faces, floor, 1 photo)", every[d["row"][det]], time.perf_counter() - t0)
    print(f"  facejob cluster: {(~seeds).sum()} faces below quality {MIN_QUALITY} ({(~seeds[d['row'][det]]).sum()} "
          f"of them subject faces), {st_all['attached']} joined a cluster")
    # The same with the labelling protocol's labels stored (5 photos of each of 158 people), as
    # `facejob reduce` clusters once the curator has named people: scored on every image.
    P = label_protocol(d)
    named_rows = {int(d["row"][i]): str(truth_all[i]) for i in P["lab"] if d["row"][i] >= 0}
    t0 = time.perf_counter()
    with_names, st_names = facejob_clusters(d["emb"], uris=d["face_uri"], seeds=seeds, names=named_rows)
    add(f"  same, {len(P['lab'])} labels as constraints", with_names[d["row"][det]], time.perf_counter() - t0)
    every_free, _ = facejob_clusters(d["emb"])
    add("facejob, all faces, no same-photo rule", every_free[d["row"][det]], 0.0)
    print(f"  facejob on all {len(d['emb'])} faces: {st_all}")
    for name, lab in (("with", every), ("with labels and", with_names), ("without", every_free)):
        pairs = collections.Counter(zip(d["face_uri"], lab.tolist()))
        print(f"  {name} the same-photo rule: {sum(c > 1 for c in pairs.values())} clusters hold two faces of one photo")
    for eps in ((0.5, 0.55, 0.6) if not args.no_baselines else ()):
        if eps == 0.5:
            t0 = time.perf_counter()
            add("chinese whispers 0.5 (dlib)", chinese_whispers(x, 0.5), time.perf_counter() - t0)
        for ms in (3, 4):
            t0 = time.perf_counter()
            add(f"DBSCAN eps {eps} min_samples {ms}", dbscan(x, eps, ms), time.perf_counter() - t0)
    if args.full_linkage:
        t0 = time.perf_counter()
        full = full_average_linkage(x, np.round(np.arange(0.40, 0.76, 0.02), 2))
        secs = time.perf_counter() - t0
        best = max(full, key=lambda t: scores(truth, full[t])["F"])
        add(f"all-pairs avg linkage, best t={best} (n^2)", full[best], secs)
    print(f"\n{'clustering':<44} {'all ' + str(len(truth_all)) + ' images':>34} | {'detected faces':>30} | clusters  secs")
    print(f"{'':<44} {'pairP':>7} {'pairR':>7} {'pairF':>7} {'BcubF':>7}   | {'pairF':>7} {'BcubF':>7} {'':>13}|")
    for name, a, b, nc, secs in rows:
        print(f"{name:<44} {a['P']:7.4f} {a['R']:7.4f} {a['F']:7.4f} {a['bF']:7.4f}   | {b['F']:7.4f} {b['bF']:7.4f} "
              f"{'':>13}| {nc:8d} {secs:5.1f}")

    if args.sweep:
        print("\nfacejob threshold / k sweep (all images): pairwise F / BCubed F")
        for k in (5, 10, 20):
            line = []
            for t in (0.49, 0.5, 0.505, 0.51, 0.515, 0.52, 0.525, 0.53, 0.54):
                lab, _ = facejob_clusters(x, t, k)
                s = scores(truth_all, with_missing(lab, det))
                line.append(f"t={t}: {s['F']:.3f}/{s['bF']:.3f}")
            print(f"  k={k:<3} " + "  ".join(line))

    if args.subsets:
        run_subsets(d)
    if not args.no_label:
        results, P = run_labelling(d, every)
        print(f"\nlabelling: {len(P['known'])} people with >= 10 images, 5 labelled each ({len(P['lab'])} faces); "
              f"{len(P['test'])} of their other images to name ({P['test_detected']} with a face found); "
              f"{len(P['distract'])} single-image people to reject ({P['distract_detected']} with a face found)")
        print(f"{'method':<48} {'known accuracy':>15} {'distractors rejected':>21}")
        for name, acc, rej in results:
            print(name if np.isnan(acc) else f"{name:<48} {acc:15.4f} {rej:21.4f}")
    if args.sizes:
        run_sizes(d, [float(f) for f in args.sizes.split(",")])
    if args.dedup:
        run_dedup(args.out)


if __name__ == "__main__":
    main()
