"""`facejob report` on all of LFW: build time, size, and how fast the page is in headless Chromium.

    facejob index /work/shared/data/lfw/images --out /tmp/lfw_out && facejob reduce /tmp/lfw_out
    python -m bench.report_lfw /tmp/lfw_out [--workers 2] [--loads 5] [--query bush]

Prints: the build's wall time (and per phase), files and MB written; then, over --loads fresh
page loads from file://, the median ms from navigation start until the people page is usable
(first cards drawn, search box live: FJ.ready), until all of its thumbnail sprites have loaded,
for a search (--query) to show results, and for the largest person's page to show its faces.
Also checks that no cluster holds two faces of one photo.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from facejob.report import build
from tests.browser import chromium, wait_for

SPRITES_LOADED = """
const done = arguments[arguments.length - 1];
const urls = [...new Set([...document.querySelectorAll('.card .thumb')].map(t => getComputedStyle(t).backgroundImage.slice(5, -2)))];
Promise.all(urls.map(u => new Promise(r => { const i = new Image(); i.onload = () => r(1); i.onerror = () => r(0); i.src = u; })))
  .then(x => done([x.length, performance.now()]));
"""


def page_figures(index: Path, query: str) -> dict[str, float]:
    from selenium.webdriver.common.by import By

    d = chromium()
    try:
        d.get(index.as_uri())
        ready = wait_for(lambda: d.execute_script("return FJ && FJ.ready"), what="people page")
        n_sprites, t_sprites = d.execute_async_script(SPRITES_LOADED)
        cards = len(d.find_elements(By.CSS_SELECTOR, ".card"))
        t0 = d.execute_script("return performance.now()")
        d.find_element(By.ID, "search").send_keys(query)
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#results li[data-pos]"), what="search results")
        t_search = d.execute_script("return performance.now()") - t0
        t0 = d.execute_script("return performance.now()")
        d.execute_script("location.hash = '#person/0'")
        wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, ".face")) > 0, what="the largest person's faces")
        t_person = d.execute_script("return performance.now()") - t0
        return {"ready_ms": ready, "sprites_ms": t_sprites, "sprites": n_sprites, "search_ms": t_search,
                "person_ms": t_person, "cards": cards}
    finally:
        d.quit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="facejob index + reduce output of the LFW images")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--query", default="bush", help="what to search for (a name or file name in the archive)")
    args = ap.parse_args()

    t = pq.read_table(Path(args.out) / "clusters.parquet", columns=["uri", "cluster_id"]).to_pylist()
    twice = sum(c > 1 for c in Counter((r["uri"], r["cluster_id"]) for r in t).values())
    print(f"clusters.parquet: {len(t)} faces, {len({r['cluster_id'] for r in t})} clusters; "
          f"(photo, cluster) pairs with two or more faces: {twice}")

    def cpu() -> float:
        return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    c0, t0 = cpu(), time.perf_counter()
    s = build(args.out, workers=args.workers, progress=False)
    wall, cpu_s = time.perf_counter() - t0, cpu() - c0
    files = [p for p in (Path(args.out) / "report").rglob("*") if p.is_file()]
    mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"build: {wall:.1f} s wall with {args.workers} workers, {cpu_s:.1f} CPU-s (this process + workers; "
          f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) {s.timings}")
    print(f"  {s.people} people, {s.faces} faces, {s.photos} photos; {len(files)} files, {mb:.0f} MB")

    runs = [page_figures(Path(s.path), args.query) for _ in range(args.loads)]
    print(f"page (headless Chromium, file://, median of {len(runs)} fresh loads):")
    for k, what in (("ready_ms", "people page usable (cards drawn, search live)"),
                    ("sprites_ms", "its thumbnail sprites loaded"),
                    ("search_ms", f"search {args.query!r} shows results"), ("person_ms", "largest person's page shows faces")):
        vals = [r[k] for r in runs]
        print(f"  {what:<48} {statistics.median(vals):8.0f} ms   (min {min(vals):.0f}, max {max(vals):.0f})")
    print(f"  cards on the first screenful batch: {runs[0]['cards']}, sprites used by them: {runs[0]['sprites']}")


if __name__ == "__main__":
    main()
