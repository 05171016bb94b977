"""The review page, driven in headless Chromium: built from a real index of the labelled photo sets
plus copies of one photo under hostile file names; the curator's corrections go through the
downloaded file into `facejob reduce` and stay applied on later runs."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facejob.cli import main as cli
from tests.browser import chromium, screenshot, wait_for
from tests.test_reduce_data import make_out, photos

HOSTILE = ["<img src=x onerror=alert(1)>.jpg", "\"><svg onload=window.__pwned=1>.jpg"]
HOSTILE_SOURCE = "labelled/dlib_johns/John_Salley"   # the first photo in here is copied under both names
NAME = "Dr <b>Who</b> & co"                          # typed by the curator: shown and stored as text
SPLIT = "Split Person"
OTHER = "Zed Other"         # a predicted name, after SPLIT by name
# Where the text of each element matching arguments[0] wraps: the character before each line break.
BREAKS = """
return [...document.querySelectorAll(arguments[0])].map(e => {
  const w = document.createTreeWalker(e, NodeFilter.SHOW_TEXT), out = [];
  let top = null, prev = null, n;
  while ((n = w.nextNode())) {
    for (let i = 0; i < n.length; i++) {
      const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
      const rect = r.getClientRects()[0];
      if (!rect || !rect.width) { prev = n.data[i]; continue; }
      if (top !== null && rect.top > top + 2) out.push(prev + "|" + n.data[i]);
      top = rect.top; prev = n.data[i];
    }
  }
  return [e.textContent, out];
});"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_dir):
    """OUT indexed from ../shared/data/labelled + the hostile copies, reduced, with a report."""
    tmp = tmp_path_factory.mktemp("report")
    src = sorted((data_dir / HOSTILE_SOURCE).glob("*.jpg"))[0]
    hostile = tmp / "hostile"
    hostile.mkdir()
    for name in HOSTILE:
        shutil.copyfile(src, hostile / name)
    out = tmp / "out"
    make_out(out, photos(data_dir, ("labelled",)) + sorted(hostile.iterdir()))
    assert cli(["reduce", str(out)]) == 0
    assert cli(["report", str(out), "--quiet", "--workers", "2"]) == 0
    shutil.copytree(out, tmp / "pristine")      # for tests that change it their own way
    return out


@pytest.fixture(scope="module")
def split(archive, tmp_path_factory):
    """A copy of the archive in which the clusterer split its largest person in two (every other
    face, by page order of distance to the mean, in a new cluster) and both halves carry the
    curator's name SPLIT: what a long-running archive looks like after a person changed looks."""
    out = tmp_path_factory.mktemp("split") / "out"
    shutil.copytree(archive.parent / "pristine", out)
    t = pq.read_table(out / "clusters.parquet")
    cid = t.column("cluster_id").to_pylist()
    largest = Counter(cid).most_common(1)[0][0]
    rows = [i for i, c in enumerate(cid) if c == largest]
    new_id = max(cid) + 1
    for i in rows[1::2]:
        cid[i] = new_id
    i = t.schema.get_field_index("cluster_id")
    pq.write_table(t.set_column(i, "cluster_id", pa.array(cid, t.schema.field(i).type)), out / "clusters.parquet")
    face_ids = t.column("face_id").to_pylist()
    named = {face_ids[i] for i in rows}
    label = [SPLIT if f in named else "unknown" for f in face_ids]
    # The next largest cluster is named OTHER by its predictions, but one of its faces is
    # predicted someone else: a doubtful face however the clusterer grouped the photos.
    other = Counter(c for c in cid if c not in (largest, new_id)).most_common(1)[0][0]
    other_rows = [i for i, c in enumerate(cid) if c == other]
    assert len(other_rows) >= 2
    for i in other_rows:
        label[i] = OTHER
    label[other_rows[0]] = "Someone Else"
    pq.write_table(pa.table({"face_id": face_ids, "label": label,
                             "probability": [1.0 if f in named else 0.2 if lab == "unknown" else 0.9
                                             for f, lab in zip(face_ids, label)],
                             "labelled": [f in named for f in face_ids]}), out / "predictions.parquet")
    assert cli(["report", str(out), "--quiet", "--workers", "1"]) == 0
    return out, largest, new_id, named


def _clusters(out: Path) -> dict[str, int]:
    t = pq.read_table(out / "clusters.parquet", columns=["face_id", "cluster_id"])
    return dict(zip(t.column("face_id").to_pylist(), t.column("cluster_id").to_pylist()))


def _no_script_ran(d) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    try:
        text = d.switch_to.alert.text
    except NoAlertPresentException:
        pass
    else:
        raise AssertionError(f"a script from a file name ran (alert {text!r})")
    assert d.execute_script("return window.__pwned") is None
    assert not d.find_elements(By.CSS_SELECTOR, 'img[src="x"], svg[onload]')


def _ready(d) -> None:
    wait_for(lambda: d.execute_script("return document.body.getAttribute('data-ready')"), what="the people page")


def _load_all_cards(d, n: int) -> list:
    from selenium.webdriver.common.by import By

    def cards():
        d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        found = d.find_elements(By.CSS_SELECTOR, ".card")
        return found if len(found) >= n else None
    found = wait_for(cards, what=f"{n} people cards")
    d.execute_script("window.scrollTo(0, 0)")
    return found


def test_no_cluster_holds_two_faces_of_one_photo(archive):
    t = pq.read_table(archive / "clusters.parquet", columns=["uri", "cluster_id"]).to_pylist()
    per_photo: dict[str, list[int]] = {}
    for r in t:
        per_photo.setdefault(r["uri"], []).append(r["cluster_id"])
    multi = {u: c for u, c in per_photo.items() if len(c) > 1}
    assert multi, "the labelled sets hold photos with several faces (fr_knn/test/obama_and_biden.jpg)"
    assert all(len(set(c)) == len(c) for c in multi.values()), multi


def test_report_page_corrections_round_trip(archive, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out = archive
    clusters = _clusters(out)
    n_people = len(set(clusters.values()))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    d = chromium(downloads)
    try:
        # No names yet: one card per cluster, single-face ones shown on request.
        d.get((out / "report" / "index.html").as_uri() + "#people?singles=1")
        _ready(d)
        cards = _load_all_cards(d, n_people)
        assert len(cards) == n_people
        # Every card has thumbnails, and every sprite sheet they use is a real image.
        assert all(c.find_elements(By.CSS_SELECTOR, ".thumb") for c in cards)
        widths = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const urls = [...new Set([...document.querySelectorAll('.card .thumb')].map(
                t => getComputedStyle(t).backgroundImage.slice(5, -2)))];
            Promise.all(urls.map(u => new Promise(r => { const i = new Image(); i.onload = () => r(i.naturalWidth);
                                                         i.onerror = () => r(0); i.src = u; }))).then(done);""")
        assert widths and all(w > 0 for w in widths), widths
        _no_script_ran(d)
        screenshot(d, "report-people.png")

        # Search finds the hostile file names and shows them as text.
        box = d.find_element(By.ID, "search")
        box.send_keys("onerror")
        hit = wait_for(lambda: [li for li in d.find_elements(By.CSS_SELECTOR, "#results li[data-pos]")
                                if HOSTILE[0] in li.text], what="the hostile file name in the search results")
        _no_script_ran(d)
        hit[0].click()
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".face"), what="the person page")
        shown = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".fname")]
        assert all(f"hostile/{name}" in shown for name in HOSTILE), shown     # with their folder
        _no_script_ran(d)
        hostile_face = [e for e in d.find_elements(By.CSS_SELECTOR, ".face") if HOSTILE[0] in e.text][0]
        hostile_face.find_element(By.CSS_SELECTOR, ".thumb").click()
        info = wait_for(lambda: d.find_element(By.ID, "viewer-info").text, what="the photo viewer")
        assert HOSTILE[0] in info
        _no_script_ran(d)
        d.find_element(By.ID, "viewer-close").click()
        d.execute_script("location.hash = '#dups'")
        wait_for(lambda: any(HOSTILE[1] in e.text for e in d.find_elements(By.CSS_SELECTOR, ".dup figcaption")),
                 what="the hostile copies on the duplicates page")
        _no_script_ran(d)

        # Name the largest person, take their most doubtful face out, download the corrections.
        d.execute_script("location.hash = '#people'")
        first = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card input.name"), what="cards")[0]
        cluster_id = int(first.get_attribute("data-cluster"))
        first.send_keys(NAME + Keys.ENTER)
        wait_for(lambda: d.execute_script("return FJ.corrections().length") == 1, what="the name correction")
        d.execute_script("location.hash = '#person/0'")
        face = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".face"), what="the person page")[0]
        removed = face.get_attribute("data-face")
        face.find_element(By.CSS_SELECTOR, "button.not-person").click()
        wait_for(lambda: d.execute_script("return FJ.corrections().length") == 2, what="the not-this-person correction")
        # The second and third largest people are one person (as far as this test is concerned).
        # A picked card stays marked while the curator looks at someone else.
        d.execute_script("location.hash = '#people'")
        picks = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card .pick input"), what="cards")[1:3]
        for box in picks:
            box.click()
        d.execute_script("location.hash = '#person/4'")
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".face"), what="another person's page")
        d.execute_script("location.hash = '#people'")
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card"), what="cards")
        assert [c.get_attribute("data-pos") for c in d.find_elements(By.CSS_SELECTOR, ".card.picked")] == ["1", "2"]
        assert d.find_element(By.CSS_SELECTOR, '.card[data-pos="1"] .pick input').is_selected()
        d.find_element(By.ID, "same").click()
        wait_for(lambda: d.execute_script("return FJ.corrections().length") == 3, what="the same-person correction")
        # ... and once joined, the two cards say so (until a rebuild applies it), after a reload too.
        for _ in range(2):
            wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, ".card.joined")) == 2, what="the joined cards marked")
            assert [c.get_attribute("data-pos") for c in d.find_elements(By.CSS_SELECTOR, ".card.joined")] == ["1", "2"]
            d.refresh()
            _ready(d)
        d.find_element(By.ID, "download").click()
        path = wait_for(lambda: next((p for p in downloads.glob("corrections*.json")), None), what="the download")
        wait_for(lambda: not list(downloads.glob("*.crdownload")) and path.stat().st_size > 0, what="the download to end")
        # One more name, made after the download: not in the file, so still pending after the rebuild.
        late = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, '.card[data-pos="3"] input.name'), what="a card")[0]
        late.send_keys("Late Name" + Keys.ENTER)
        wait_for(lambda: d.execute_script("return FJ.corrections().length") == 4, what="the late name")
        late_id = d.execute_script("return FJ.corrections()[3].id")
        ids = d.execute_script("return FJ.corrections().map(c => c.id)")
        assert len(set(ids)) == 4 and all(ids)
    except BaseException:
        d.quit()
        raise

    doc = json.loads(path.read_text())
    assert [e["id"] for e in doc["corrections"]] == ids[:3]
    named = next(e for e in doc["corrections"] if e["kind"] == "name")
    assert named["name"] == NAME and named["cluster_id"] == cluster_id
    # Named first (the whole cluster), then one face taken out: it loses the name.
    assert set(named["face_ids"]) == {f for f, c in clusters.items() if c == cluster_id}
    members = set(named["face_ids"]) - {removed}
    assert removed in named["face_ids"] and len(members) >= 2
    same = next(e for e in doc["corrections"] if e["kind"] == "same_person")
    joined = [f for g in same["face_ids"] for f in g]
    assert len(same["cluster_ids"]) == 2 and cluster_id not in same["cluster_ids"]
    assert all({f for f, c in clusters.items() if c == cid} == set(g) for cid, g in zip(same["cluster_ids"], same["face_ids"]))

    try:
        _apply_and_rebuild(d, out, path, cluster_id, removed, members, same, joined, ids, late_id)
    finally:
        d.quit()


def _apply_and_rebuild(d, out, path, cluster_id, removed, members, same, joined, ids, late_id) -> None:
    from selenium.webdriver.common.by import By

    assert cli(["reduce", str(out), "--corrections", str(path)]) == 0
    for run in range(2):      # the second run reads the corrections stored in OUT
        if run:
            assert cli(["reduce", str(out)]) == 0
        after = _clusters(out)
        assert after[removed] != cluster_id
        assert all(after[f] == cluster_id for f in members)
        pred = {r["face_id"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}
        assert all(pred[f]["label"] == NAME and pred[f]["labelled"] for f in members)
        assert pred[removed]["label"] != NAME
        assert len({after[f] for f in joined}) == 1 and after[joined[0]] in same["cluster_ids"]
    stored = json.loads((out / "labels" / "corrections.json").read_text())["corrections"]
    assert [e["id"] for e in stored] == ids[:3]
    # The same file again adds nothing (by id).
    assert cli(["reduce", str(out), "--corrections", str(path)]) == 0
    assert len(json.loads((out / "labels" / "corrections.json").read_text())["corrections"]) == 3

    # The next report shows the name as the curator's, as text; reloading the page (same browser,
    # same stored corrections) shows the three applied ones as applied, the late one as pending.
    assert cli(["report", str(out), "--quiet", "--workers", "1"]) == 0
    d.refresh()
    _ready(d)
    assert d.execute_script("return FJ.corrections().map(c => c.id)") == [late_id]
    assert d.find_element(By.ID, "corr-count").text == "1 correction not yet applied"
    box = d.find_element(By.CSS_SELECTOR, f'.card input.name[data-cluster="{cluster_id}"]')
    assert box.get_attribute("value") == NAME and "given" in box.get_attribute("class")
    assert not d.find_elements(By.CSS_SELECTOR, ".card.joined")
    assert not d.find_elements(By.CSS_SELECTOR, ".card b")
    screenshot(d, "report-people-named.png")


def test_report_needs_the_reducer_first(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    make_out(out, photos(data_dir, ("labelled/faceapi_bbt/amy",)))
    assert cli(["report", str(out), "--quiet"]) == 3
    assert "run `facejob reduce" in capsys.readouterr().err
    assert not (out / "report").exists()


def test_report_on_s3(s3, tmp_path, data_dir):
    """An s3:// output gets the same site (an S3 website can serve it); a rebuild replaces the
    build and keeps the previews."""
    from facejob.reduce import reduce
    from facejob.report import build

    local = tmp_path / "local"
    make_out(local, photos(data_dir, ("labelled/dlib_johns",)))
    for f in local.rglob("*"):
        if f.is_file():
            s3.put(f"archive/{f.relative_to(local).as_posix()}", f.read_bytes())
    out = s3.uri("archive")
    reduce(out)
    first = build(out, workers=1, progress=False)
    keys = set(s3.keys("archive/report/"))
    assert "archive/report/index.html" in keys and first.previews == 55    # photos shown; two share one file
    html = s3.client.get_object(Bucket=s3.bucket, Key="archive/report/index.html")["Body"].read().decode()
    build_id = html.split('data-build="')[1].split('"')[0]
    assert f"archive/report/b/{build_id}/data/meta.js" in keys and f"archive/report/b/{build_id}/app.js" in keys
    assert sum(k.startswith("archive/report/photos/") for k in keys) == 54
    assert sum(k.startswith(f"archive/report/b/{build_id}/thumbs/") for k in keys) == 1
    second = build(out, workers=1, progress=False)
    keys2 = set(s3.keys("archive/report/"))
    assert not any(k.startswith(f"archive/report/b/{build_id}/") for k in keys2)
    assert second.previews == 55 and {k for k in keys2 if "/photos/" in k} == {k for k in keys if "/photos/" in k}


def test_model_groups_a_split_person_and_flags_only_against_others(split):
    from facejob.report import model as m
    from facejob.io.storage import LocalStore

    out, a, b, named = split
    people = m.read_people(LocalStore(out))
    pos = [int(np.flatnonzero(people.cluster_ids == c)[0]) for c in (a, b)]
    assert people.person_of[pos[0]] == people.person_of[pos[1]] == 0      # one person, the largest
    assert list(people.clusters_of(0)) == sorted(pos)
    assert len(people.person_starts) == len(people.sizes) - 1
    # Brute force over all faces: a face is doubtful when someone of another name is nearer
    # than every other face of its own name; the clusters' split alone flags nobody.
    x = people.faces.embeddings.astype(np.float64)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    mine = np.isin(people.faces.face_ids.to_numpy(zero_copy_only=False), list(named))
    rows = np.flatnonzero(mine)
    own = people.cluster_of[rows][:, None] == people.cluster_of[rows][None]
    d_own = np.where(own, d[np.ix_(rows, rows)], np.inf).min(1)
    d_sib = np.where(~own, d[np.ix_(rows, rows)], np.inf).min(1)
    d_out = d[np.ix_(rows, np.flatnonzero(~mine))].min(1)
    expected = d_out < np.minimum(d_own, d_sib)
    assert (people.flagged[rows] == expected).all()
    old_rule = np.minimum(d_sib, d_out) < d_own          # "another cluster is nearer"
    assert (old_rule & ~expected).sum() >= 3, "the split must put faces next to the other half"


def test_report_one_card_per_name_filters_and_search(split, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, a, b, named = split
    clusters = _clusters(out)
    sizes = Counter(clusters.values())
    n_clusters, singles = len(sizes), sum(n == 1 for n in sizes.values())
    assert singles >= 2
    d = chromium()
    try:
        d.get((out / "report" / "index.html").as_uri())
        _ready(d)
        # Singletons hidden by default, with a count and a link that shows them.
        shown = d.find_element(By.ID, "shown").text
        assert f"Showing {n_clusters - 1 - singles} people of {n_clusters - 1}." in shown
        assert f"{singles} single-face clusters hidden — show" in shown
        cards = _load_all_cards(d, n_clusters - 1 - singles)
        assert len(cards) == n_clusters - 1 - singles
        first = cards[0]
        assert first.find_element(By.CSS_SELECTOR, "input.name").get_attribute("value") == SPLIT
        assert f"{len(named)} faces" in first.text and "2 clusters" in first.text
        assert sum(SPLIT in c.find_element(By.CSS_SELECTOR, "input.name").get_attribute("value") for c in cards) == 1
        d.find_element(By.ID, "show-singles").click()
        wait_for(lambda: "singles=1" in d.current_url and d.find_element(By.ID, "shown").text.startswith(
            f"Showing {n_clusters - 1} people"), what="single-face cards shown")
        assert len(_load_all_cards(d, n_clusters - 1)) == n_clusters - 1

        # The person's page: both clusters, one after the other.
        d.execute_script("location.hash = '#person/0'")
        wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, ".face")) == len(named), what="the split person's faces")
        heads = [h.text for h in d.find_elements(By.CSS_SELECTOR, ".cluster-head")]
        assert [h.split(" · ")[0] for h in heads] == [f"Cluster {a}", f"Cluster {b}"], heads
        # File names show their folder and wrap only between words.
        for text, breaks in d.execute_script(BREAKS, ".fname .path"):
            assert text.count("/") == 1, text
            assert all(br[0] in "/_-. " for br in breaks), (text, breaks)

        # Filters: unnamed only, doubtful only; sort by name puts the named first.
        d.execute_script("location.hash = '#people'")
        _ready(d)
        d.find_element(By.ID, "f-unnamed").click()
        wait_for(lambda: "unnamed=1" in d.current_url, what="the unnamed filter")
        cards = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card"), what="cards")
        assert all(not c.find_element(By.CSS_SELECTOR, "input.name").get_attribute("value") for c in cards)
        assert len(cards) == n_clusters - 3 - singles         # SPLIT's two clusters and OTHER's are named
        d.find_element(By.ID, "f-unnamed").click()
        d.find_element(By.ID, "f-doubtful").click()
        wait_for(lambda: "doubtful=1" in d.current_url and "unnamed" not in d.current_url, what="the doubtful filter")
        cards = d.find_elements(By.CSS_SELECTOR, ".card")
        assert cards and all(c.find_elements(By.CSS_SELECTOR, ".badge") for c in cards)
        d.find_element(By.ID, "f-doubtful").click()
        Select(d.find_element(By.ID, "sort")).select_by_value("name")
        wait_for(lambda: "sort=name" in d.current_url, what="sort by name")
        first = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card input.name"), what="cards")[0]
        assert first.get_attribute("value") == SPLIT

        # Search: a photo with two faces is one hit.
        box = d.find_element(By.ID, "search")
        box.send_keys("obama_and_biden")
        hits = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, "#results li[data-pos]"), what="search results")
        t = pq.read_table(out / "clusters.parquet", columns=["uri", "cluster_id"]).to_pylist()
        k = len({r["cluster_id"] for r in t if r["uri"].endswith("/obama_and_biden.jpg")})
        assert k >= 2 and len(hits) == 1
        assert hits[0].text.split("\n") == ["test/obama_and_biden.jpg", f"photo · {k} people"]
        # Typing again right after the box lost focus: the blur's delayed hide must not take the results.
        d.execute_script("var b = arguments[0]; b.blur(); b.focus(); b.value = arguments[1];"
                         "b.dispatchEvent(new Event('input'));", box, SPLIT.split()[0])
        hits = wait_for(lambda: [h for h in d.find_elements(By.CSS_SELECTOR, "#results li[data-pos]")
                                 if h.text.endswith("person")], what="the name in the search results")
        assert [(h.text.split("\n")[0], h.get_attribute("data-pos")) for h in hits] == [(SPLIT, "0")]
        screenshot(d, "report-split.png")
    finally:
        d.quit()


def test_run_summary_and_duplicates_read_plainly(archive):
    import re

    from selenium.webdriver.common.by import By

    d = chromium(width=1280, height=800)
    try:
        d.get((archive / "report" / "index.html").as_uri() + "#summary")
        plots = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".plot svg"), what="the plots")
        height = d.execute_script("return window.innerHeight")
        assert all(p.rect["y"] + p.rect["height"] <= height for p in plots), "the plots are above the fold"
        text = d.find_element(By.ID, "view").text
        stamps = re.findall(r"\d{4}-\d\d-\d\d[^ ]*(?: \d\d:\d\d(?: UTC)?)?", text)
        assert stamps and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", s) for s in stamps), stamps
        assert not re.search(r"\b\w+_\w+\b", text.replace(str(archive), "")), "a raw key is shown"

        d.execute_script("location.hash = '#dups'")
        wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".dup figcaption"), what="duplicates")
        wrapped = d.execute_script(BREAKS, ".dup figcaption .path, .dup figcaption .reason")
        assert sum(len(b) for _, b in wrapped) >= 3, "long reasons wrap"
        for text, breaks in wrapped:
            assert all(br[0] in "/_-. :;,)" for br in breaks), (text, breaks)
        for fig in d.find_elements(By.CSS_SELECTOR, ".dup figure"):     # nothing spills out of its column
            assert d.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth + 1", fig)
    finally:
        d.quit()
