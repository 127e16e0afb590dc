"""xlt registry: the system of record and the only writer of registry state."""
