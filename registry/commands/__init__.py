"""Registry commands: each is one unit of work (one transaction, one event, one outbox row)."""
