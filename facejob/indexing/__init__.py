"""`facejob index`: photos → rows in OUT.

    pipeline.py  FaceModel: the pure per-image and per-shard work (decode → detect → align →
                 embed → quality) → Arrow tables
    plan.py      catalog diff, shards, retiring rows, retirement guards, quarantine
    driver.py    the driver: Ray actor pool, retries, progress, run.json (facejob.index)
    verify.py    two photos, same person? (facejob.verify), with the same FaceModel

(Named `indexing`, not `index`: `facejob.index` is the public function.)
"""
