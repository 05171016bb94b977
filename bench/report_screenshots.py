"""Screenshots of the review page at ~1,000 photos (README's review section shows them).

    python -m bench.report_screenshots --work /tmp/report-shots [--docs docs/report]

Copies a fixed subset of LFW (FACEJOB_DATA/lfw/images; seed 18) into WORK/photos/ in dated
roll folders: 20 people with 25 photos, 60 with 4, 260 with 1, plus 8 re-encoded smaller
copies (988 photos); runs `facejob index` (skipped when WORK/out exists), `facejob reduce`, names
6 people from 3 photos each (`facejob label --labels WORK/labels.csv`), `facejob report`; then
saves the people page, a person's page (one split into two clusters where the run has one),
filters, duplicates and the run summary as 160-colour PNGs in --docs, and prints their sizes.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from tests.browser import chromium, wait_for  # noqa: E402

DATA = Path(os.environ.get("FACEJOB_DATA", REPO.parent / "shared" / "data"))
COLOURS = 160          # keeps each PNG under ~150 KB with faces on it
ROLLS = [f"2003/roll_{i:02d}" for i in range(1, 9)] + [f"2004/roll_{i:02d}" for i in range(1, 5)]


def subset(dst: Path) -> list[tuple[str, Path]]:
    """Copy the photo subset into dst; returns (person, path) per photo (copies left out)."""
    from PIL import Image

    rng = random.Random(18)
    src = DATA / "lfw" / "images"
    files = {p.name: sorted(p.glob("*.jpg")) for p in sorted(src.iterdir()) if p.is_dir()}
    pick: dict[str, list[Path]] = {}
    for n in rng.sample([n for n in files if 25 <= len(files[n]) <= 60], 20):
        pick[n] = rng.sample(files[n], 25)
    for n in rng.sample([n for n in files if 3 <= len(files[n]) <= 8], 60):
        pick[n] = files[n][:4]
    for n in rng.sample([n for n in files if len(files[n]) == 1], 260):
        pick[n] = files[n]
    out = []
    for n, fs in sorted(pick.items()):
        for f in fs:
            d = dst / rng.choice(ROLLS)
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, d / f.name)
            out.append((n, d / f.name))
    for _, p in rng.sample(out, 8):       # resized, re-encoded copies: the duplicates page
        Image.open(p).resize((200, 200)).save(p.parent / f"{p.stem}_copy.jpg", quality=80)
    return out


def labels(path: Path, photos: list[tuple[str, Path]], out: Path) -> None:
    """Three single-face photos each of the first six people with 25 photos."""
    import pyarrow.dataset as ds

    faces = Counter(ds.dataset(out / "faces").to_table(columns=["uri"]).column("uri").to_pylist())
    big = sorted({n for n, _ in photos if sum(m == n for m, _ in photos) == 25})[:6]
    rows = []
    for n in big:
        rows += [[n.replace("_", " "), str(p)] for m, p in sorted(photos, key=lambda x: x[1].name)
                 if m == n and faces[str(p)] == 1][:3]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["name", "uri"], *rows])


def facejob(*args: str) -> None:
    cmd = [sys.executable, "-m", "facejob", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def shoot(index: Path, docs: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    d = chromium(width=1200, height=860)
    try:
        d.get(index.as_uri())
        wait_for(lambda: d.execute_script("return document.body.getAttribute('data-ready')"), what="the people page")
        # A person in several clusters, if the run has one; else the largest.
        multi = [c.get_attribute("data-pos") for c in d.find_elements(By.CSS_SELECTOR, ".card")
                 if " clusters" in c.text]
        views = [("people", "#people"), ("person", f"#person/{multi[0] if multi else 0}"),
                 ("filters", "#people?sort=doubtful&doubtful=1"), ("duplicates", "#dups"), ("summary", "#summary")]
        for name, h in views:
            d.execute_script("location.hash = arguments[0]; window.scrollTo(0, 0)", h)
            wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card, .face, .dup, .plot"), what=name)
            d.execute_async_script("""const done = arguments[arguments.length - 1];
                const seen = [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight);
                Promise.all(seen.map(i => i.complete ? 1 : new Promise(r => { i.onload = i.onerror = r; })))
                  .then(() => setTimeout(done, 300));""")
            time.sleep(0.5)       # sprite sheets (CSS backgrounds) decode
            raw = docs / f"{name}.raw.png"
            d.save_screenshot(str(raw))
            png = docs / f"{name}.png"
            Image.open(raw).convert("RGB").quantize(COLOURS, dither=Image.Dither.NONE).save(png, optimize=True)
            raw.unlink()
            print(f"{png.relative_to(REPO) if png.is_relative_to(REPO) else png}: {png.stat().st_size / 1024:.0f} KB")
    finally:
        d.quit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True, help="scratch folder: photos/, out/, labels.csv")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "report", help="where the PNGs go")
    args = ap.parse_args()
    work, out = args.work.resolve(), args.work.resolve() / "out"
    photos_dir = work / "photos"
    if not out.exists():
        shutil.rmtree(photos_dir, ignore_errors=True)
        photos = subset(photos_dir)
        facejob("index", str(photos_dir), "--out", str(out), "--workers", "1", "-q")
    else:
        photos = [(p.stem.rsplit("_", 1)[0], p) for p in sorted(photos_dir.rglob("*.jpg")) if "_copy" not in p.stem]
    facejob("reduce", str(out), "-q")
    labels(work / "labels.csv", photos, out)
    facejob("label", str(out), "--labels", str(work / "labels.csv"), "--replace")
    facejob("report", str(out), "-q")
    args.docs.mkdir(parents=True, exist_ok=True)
    shoot(out / "report" / "index.html", args.docs)


if __name__ == "__main__":
    main()
