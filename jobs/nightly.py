"""The nightly facejob run, as a script for `ray job submit` (the same as `facejob nightly`):

    ray job submit --working-dir . -- python jobs/nightly.py --config jobs/nightly.yaml
    python jobs/nightly.py --config jobs/nightly.yaml --check

Ray puts the working directory on the job's PYTHONPATH, so `facejob` imports from the uploaded
tree; elsewhere it comes from the installed package. See facejob/nightly.py.
"""
import sys

from facejob.nightly import main

if __name__ == "__main__":
    sys.exit(main())
