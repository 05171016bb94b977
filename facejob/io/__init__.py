"""Where bytes come from and go to: input listings and reads (local folders, s3://), the output
Store (a folder or an S3 prefix, atomic writes, damage checks) and the one-writer lock on it.

    sources.py  listing input photos → ImageRef; uris for any file name; reading a photo's bytes
    storage.py  the Store protocol, LocalStore, open_store, Parquet reads and writes
    s3.py       S3 through boto3: listing, reads, conditional PUTs, S3Store
    lock.py     one writer per output: flock locally, a conditional-PUT lease on S3
    base.py     what sources, stores and s3.py share (ImageRef, SourceUnavailable, safe_rel)

Knows nothing of faces or of what the files mean (that is facejob.contract).
"""
