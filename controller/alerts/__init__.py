"""Alerts that reach people: webhook delivery of `alert` events (generic JSON and
Slack-compatible) through the alert_deliveries outbox, and the mirror-stuck check."""
