"""Point an isolated OpenCode config at the scripted provider."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_ops.errors import ConfigError
from nexus_ops.paths import atomic_write

PROVIDER_ID = "scripted"
MODEL = f"{PROVIDER_ID}/m1"


def provider_config(base_url: str) -> dict[str, Any]:
    """The ``provider`` entry and default model for OpenCode's ``opencode.json``.

    >>> provider_config("http://127.0.0.1:9/v1")["model"]
    'scripted/m1'
    """
    return {
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Scripted",
                "options": {"baseURL": base_url},
                "models": {"m1": {"name": "m1"}},
            }
        },
        "model": MODEL,
        "small_model": MODEL,
    }


def config_file(home: Path, xdg_config_home: Path | None = None) -> Path:
    """``opencode.json`` of the OpenCode that runs with this HOME (and XDG_CONFIG_HOME)."""
    return (xdg_config_home or home / ".config") / "opencode" / "opencode.json"


def write_provider_config(
    home: Path,
    base_url: str,
    xdg_config_home: Path | None = None,
    allow_user_config: bool = False,
) -> Path:
    """Add the scripted provider to the OpenCode config of ``home``; return the file.

    Other settings in the file are kept. The user's own HOME is refused unless
    ``allow_user_config``: a synthetic model must not replace a real one by accident.
    """
    if not allow_user_config and home.expanduser().resolve() == Path.home().resolve():
        raise ConfigError(
            f"{home} is your own HOME: the scripted provider would change your OpenCode config",
            hint="give a private HOME (a temporary folder), or pass allow_user_config=True",
        )
    path = config_file(home, xdg_config_home)
    current: dict[str, Any] = {}
    if path.exists():
        try:
            current = dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{path} is not a JSON object: {exc}", hint="fix or remove that file"
            ) from exc
    merged = {**current, **provider_config(base_url)}
    merged["provider"] = {**current.get("provider", {}), **merged["provider"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(merged, indent=2) + "\n").encode())
    return path
