"""The operator console: log-in, incident board, grid map, live updates, review queue (docs/CONSOLE.md).

from gridwatch.console import build_console_router
app.include_router(build_console_router(core, users, timezone=cfg.site.timezone))

The router is imported lazily: the config loader imports `ConsoleUser` from here, and the router
itself needs the config (through the ledger).
"""

from typing import Any

from gridwatch.console.auth import ConsoleUser, hash_password, verify_password

__all__ = ["ConsoleRouter", "ConsoleUser", "build_console_router", "hash_password", "verify_password"]


def __getattr__(name: str) -> Any:
    if name in ("ConsoleRouter", "build_console_router"):
        from gridwatch.console import router

        return getattr(router, name)
    raise AttributeError(name)
