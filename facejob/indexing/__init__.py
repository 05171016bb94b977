"""`facejob index`: photos → rows in OUT.

    pipeline.py  FaceModel: the pure per-image and per-shard work (decode → detect → align →
                 embed → quality) → Arrow tables
    plan.py      catalog diff, shards, retiring rows, retirement guards, quarantine
    pool.py      the Ray actor pool: workers that each build one FaceModel and take shard after
                 shard; retries; a photo that keeps killing its worker recorded as `crash`
    driver.py    the driver (facejob.index): list → plan → pool → progress, run.json
    verify.py    two photos, same person? (facejob.verify), with the same FaceModel

(Named `indexing`, not `index`: `facejob.index` is the public function.)
"""
