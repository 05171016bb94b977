"""Benchmark scripts: each prints figures. Run one from the repository root as
`python -m bench.NAME --help`; they import the installed facejob, each other as `bench.*`, and the
real S3 server and browser helpers as `tests.*`."""
