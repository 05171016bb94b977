"""The review page, driven in headless Chromium: built from a real index of the labelled photo sets
plus copies of one photo under hostile file names; the curator's corrections go through the
downloaded file into `facejob reduce` and stay applied on later runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from facejob.cli import main as cli
from tests.browser import chromium, screenshot, wait_for
from tests.test_reduce_data import make_out, photos

HOSTILE = ["<img src=x onerror=alert(1)>.jpg", "\"><svg onload=window.__pwned=1>.jpg"]
HOSTILE_SOURCE = "labelled/dlib_johns/John_Salley"   # the first photo in here is copied under both names
NAME = "Dr <b>Who</b> & co"                          # typed by the curator: shown and stored as text


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
    return out


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
        d.get((out / "report" / "index.html").as_uri())
        wait_for(lambda: d.execute_script("return document.body.getAttribute('data-ready')"), what="the people page")
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
        assert all(name in shown for name in HOSTILE), shown
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
        d.execute_script("location.hash = '#people'")
        picks = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".card .pick input"), what="cards")[1:3]
        for box in picks:
            box.click()
        d.find_element(By.ID, "same").click()
        wait_for(lambda: d.execute_script("return FJ.corrections().length") == 3, what="the same-person correction")
        d.find_element(By.ID, "download").click()
        path = wait_for(lambda: next((p for p in downloads.glob("corrections*.json")), None), what="the download")
        wait_for(lambda: not list(downloads.glob("*.crdownload")) and path.stat().st_size > 0, what="the download to end")
    finally:
        d.quit()

    doc = json.loads(path.read_text())
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
    assert len(stored) == 3

    # The next report shows the name as the curator's, as text.
    assert cli(["report", str(out), "--quiet", "--workers", "1"]) == 0
    d = chromium()
    try:
        d.get((out / "report" / "index.html").as_uri())
        wait_for(lambda: d.execute_script("return document.body.getAttribute('data-ready')"), what="the people page")
        box = d.find_element(By.CSS_SELECTOR, f'.card input.name[data-cluster="{cluster_id}"]')
        assert box.get_attribute("value") == NAME and "given" in box.get_attribute("class")
        assert not d.find_elements(By.CSS_SELECTOR, ".card b")
        screenshot(d, "report-people-named.png")
    finally:
        d.quit()


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
