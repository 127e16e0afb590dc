"""Kept for one release: `python -m controller.worker JOB_ID` is what the previous version's
subprocess executor launches, and a replica of it may still do so during a rolling upgrade.
The worker itself is controller.runtime.worker."""

from controller.runtime.worker import main

if __name__ == "__main__":
    main()
