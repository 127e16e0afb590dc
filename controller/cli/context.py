"""State shared by the CLI's commands: settings from flags/environment and a lazy Registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry.service import Registry
from registry.settings import load_settings


@dataclass
class AppContext:
    home: str | None
    database_url: str | None
    actor: str | None
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self, *, ready: bool = True) -> Registry:
        """The registry; with ready=True it must be initialised and at the current schema."""
        if self._registry is None:
            self._registry = Registry(load_settings(self.home, self.database_url), self.actor)
        if ready:
            self._registry.require_ready()
        return self._registry
