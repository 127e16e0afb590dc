"""`python -m controller.worker JOB_ID`: runs one training job for the subprocess executor.

It waits until the controller has recorded the job as running (so the two never race on the
job row), trains, and records success or failure in one transaction.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from controller.policy import load_policy
from registry.schema import Job
from registry.service import Registry

log = logging.getLogger("xlt.worker")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("job_id", type=int)
    ap.add_argument("--policy", default=None)
    args = ap.parse_args()
    reg = Registry.open(actor="worker")
    policy = load_policy(args.policy)
    deadline = time.monotonic() + 60
    while True:
        with reg.reading() as s:
            job = s.get(Job, args.job_id)
            status, params = (job.status, dict(job.params)) if job else (None, {})
        if status == "running":
            break
        if status in ("succeeded", "failed") or time.monotonic() > deadline:
            raise SystemExit(f"job {args.job_id} is {status}; nothing to do")
        time.sleep(0.5)
    from controller.live_ops import LiveOperations

    ops = LiveOperations(reg, policy)
    try:
        result = ops.train(params["task"], params["language"], {**params, "job_id": args.job_id})
    except Exception as exc:  # recorded on the job; the controller retries or alerts
        log.exception("job %s failed", args.job_id)
        reg.update_job(args.job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from exc
    reg.update_job(args.job_id, "succeeded", result=result)


if __name__ == "__main__":
    main()
