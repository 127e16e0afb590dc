"""State shared by the CLI's commands: settings from flags/environment and a lazy Registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from registry.settings import load_settings

if TYPE_CHECKING:
    from registry.service import Registry


@dataclass
class AppContext:
    home: str | None
    database_url: str | None
    actor: str | None
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self, *, ready: bool = True) -> Registry:
        """The registry; with ready=True it must be initialised and at the current schema."""
        if self._registry is None:
            from registry.service import Registry

            self._registry = Registry(load_settings(self.home, self.database_url), self.actor)
        if ready:
            self._registry.require_ready()
        return self._registry


def load_policy(path: str | None) -> Any:
    """The policy file, imported on use: `xlt --help` and the registry commands need no
    pydantic model of the policy."""
    from controller.policy import load_policy as load

    return load(path)


# every command module takes the same context object
pass_app = click.make_pass_decorator(AppContext)
