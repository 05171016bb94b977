"""How a command ends: one line on stderr and an exit status for each kind of failure, shared
by `facejob` (cli.py) and the nightly job (nightly.py)."""
from __future__ import annotations

import sys

from facejob.config import ConfigError

EXIT_INTERRUPTED = 130      # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


def run_command(name: str, command) -> int:
    """Run `command()` and turn what it raises into one line on stderr and an exit status:
    2 for input to fix (and S3 credentials), 75 for a held lock, 1 for an output that could not
    be written, 130 for Ctrl-C (nothing half-written is trusted: rerunning finishes the work)."""
    from facejob.io.lock import EXIT_LOCKED, LockHeld, LockLost
    from facejob.io.sources import SourceUnavailable

    try:
        return command()
    except KeyboardInterrupt as e:  # the index says how far it got: pool.Interrupted
        print(f"{name}: interrupted{': ' + str(e) if str(e) else ''}; rerun the same command to finish",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except LockHeld as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except SourceUnavailable as e:  # S3 kept failing (endpoint down, 5xx) through every retry
        print(f"{name}: error: {e}; S3 did not answer through all retries, rerun when it does", file=sys.stderr)
        return 1
    except (OSError, LockLost) as e:
        from facejob.io.s3 import S3AccessError

        if isinstance(e, S3AccessError):  # no retry fixes these
            print(f"{name}: error: {e}", file=sys.stderr)
            return 2
        # the output cannot be written (disk full, permissions)
        print(f"{name}: error: {e}; nothing half-written is trusted, rerun to finish", file=sys.stderr)
        return 1
