"""xlt controller: everything that acts (data, encoders, training, evaluation, drift, gates,
canary, the reconcile loop, scheduler, executors, the `xlt` CLI). Depends on `registry`."""
