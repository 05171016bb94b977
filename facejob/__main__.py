import sys

from facejob.cli import main

sys.exit(main())
