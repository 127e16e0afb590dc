"""`python -m controller.runtime.worker JOB_ID`: runs one job (a training, a gate evaluation,
a drift check) for the subprocess executor.

It waits until the controller has recorded the job as running under this process's handle
(so the two never race on the job row, and a launch whose record was lost never trains),
runs it, and records success or failure in one transaction.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

from controller.executors.base import run_claimed, wait_until_claimed
from controller.policy import load_policy
from controller.runtime.bootstrap import build_operations
from registry.service import Registry

log = logging.getLogger("xlt.worker")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("job_id", type=int)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--device", default=None, help="the device the controller placed it on")
    args = ap.parse_args()
    reg = Registry.open(actor="worker")
    policy = load_policy(args.policy)
    job = wait_until_claimed(reg, args.job_id, f"pid:{socket.gethostname()}:{os.getpid()}")
    if job is None:
        raise SystemExit(f"job {args.job_id} is not launched as this process; nothing to do")

    run_claimed(reg, job, build_operations(reg, policy).run_job, args.device)


if __name__ == "__main__":
    main()
