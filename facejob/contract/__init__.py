"""The output contract: read this before touching OUT. Every reader and writer of OUT keeps it.

Names: every file under OUT is named in layout.py (paths relative to the output root) and
nowhere else. Schemas: the Parquet tables' columns, the Status and Reason vocabularies, and the
embedding size are in schema.py. Columns are only ever added, as nullable: parts written before
a column existed read it as null (read_parts, reduce.embeddings.OPTIONAL_COLUMNS), and outputs of
earlier versions (a flat `config` in run.json, no model.json) are read and extended as they are.

Every file is written whole or not at all (facejob.io.storage: temp file + rename locally, one
PUT on S3), so the order of writes is the commit protocol:

- Index shards (facejob.indexing.pool): faces/part-<shard>.parquet first, then
  images/part-<shard>.parquet. The images part is the shard's commit marker: a shard is done
  exactly when its images part exists. A faces part without its images part is a crashed or
  running shard and counts for nothing (reduce.embeddings.parts skips it; the next index run
  deletes it, plan.remove_orphans, and redoes its photos). The catalog of indexed photos is the
  union of the images parts.
- Compaction (facejob.indexing.compact): merged shards are named `merged-<hash>`. The merged
  faces part first, then the merged images part, whose Parquet footer lists the shards it
  replaces (layout.SUPERSEDES): its existence is the commit, and from then on the replaced
  shards count for nothing even while still on disk (facejob.io.storage.committed_parts, which
  every reader of images/ and faces/ uses); they are deleted last, and the next writer deletes
  any a crash left (plan.remove_orphans) before it changes anything. Rewriting a merged part
  (retire) drops the list, so a later shard of the same name counts.
- catalog.parquet, the catalog checkpoint (facejob.indexing.checkpoint), is a cache of what
  planning needs of the images parts, written after the parts change (the end of an index run,
  compaction). Its footer names the parts it holds with each one's version (Store.list_versions)
  and the part folders' versions (Store.folder_version): a part is taken from it only while it is
  committed in that same version, any other committed part is read, and a checkpoint that cannot
  be read is ignored. So it never needs to be written in step with the parts: a crash before it
  is written costs the next plan a read of the newer parts, nothing else.
- model.json is written before the shards; run.json after the run (facejob.indexing.driver).
- Retiring rows (changed or deleted photos, facejob.indexing.plan.retire) rewrites the parts that
  hold them, faces part first, before new work starts: a photo has its old rows or none.
- A part that is not whole Parquet is moved with its shard's other part to
  quarantine/<time>/ and its photos are redone; a photo found in two parts keeps one row.
- Reducer: index/faces.hnsw and index/ids.parquet, then index/params.json (written last; an
  index whose counts disagree is rebuilt). The reducer on Ray writes the sharded index instead:
  each shard's files under a new build name, then index/shards.json naming them (a crash before
  it leaves the old manifest naming the old, whole files). Each writer removes the other
  layout's last-written file before writing and the other layout's files after.
  clusters.parquet, then cluster_events.parquet, then clusters.json (the next free id). report/index.html is written after every file it loads.
- Saved work the next reduce reuses (dedup/*.parquet; clusters.parquet + clusters.json for a
  clustering of unchanged inputs) carries a digest of what it was computed from in its own
  metadata, and is used only when that digest matches tonight's inputs and settings: each file
  is a set of facts that stay true whatever else was written or lost, so a crash between any
  two writes leaves nothing that a later run trusts wrongly.
- One writer at a time: .facejob.lock (facejob.io.lock) is held by every command that writes.
"""
