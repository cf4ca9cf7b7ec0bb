"""Docs that cannot drift: every setting, command and runbook is documented.

The settings table in README.md and docs/cli.md are generated; run
``NXOPS_UPDATE_DOCS=1 pytest tests/test_docs.py`` to rewrite them after a change.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from nexus_ops.cli import build_parser
from nexus_ops.config import Settings, field_env_name

ROOT = Path(__file__).resolve().parent.parent
UPDATE = os.environ.get("NXOPS_UPDATE_DOCS") == "1"
BEGIN = (
    "<!-- settings-table: generated from nexus_ops.config; tests/test_docs.py keeps it in step -->"
)
END = "<!-- end settings-table -->"


def settings_markdown() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = "-" if info.default is None else f"`{info.default}`"
        rows.append(f"| `{field_env_name(name)}` | {default} | {info.description} |")
    return "\n".join(rows)


def subcommands(
    parser: argparse.ArgumentParser, prefix: str = "nexus-ops"
) -> list[tuple[str, str]]:
    """(command line, help text) of every command, depth first."""
    found = [(prefix, parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += subcommands(sub, f"{prefix} {name}")
    return found


def cli_markdown() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal's width
    parts = [
        "# Command reference",
        "",
        "Generated from `nexus-ops --help`; do not edit by hand.",
        "",
    ]
    for command, text in subcommands(build_parser()):
        parts += [f"## `{command}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts)


def check_or_update(path: Path, expected: str, current: str) -> None:
    if UPDATE and expected != current:
        path.write_text(expected, encoding="utf-8")
        return
    assert expected == current, f"{path.name} is stale: run NXOPS_UPDATE_DOCS=1 pytest {__file__}"


def test_readme_lists_every_setting() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    updated = text[:start] + "\n" + settings_markdown() + "\n" + text[end:]
    check_or_update(readme, updated, text)


def test_cli_reference_lists_every_command() -> None:
    doc = ROOT / "docs" / "cli.md"
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    check_or_update(doc, cli_markdown(), current)


@pytest.mark.parametrize(
    "notebook", sorted((ROOT / "runbooks").glob("*.ipynb")), ids=lambda p: p.stem
)
def test_every_runbook_is_documented(notebook: Path) -> None:
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in (ROOT / "docs").glob("*.md")
    )
    assert f"`{notebook.stem}`" in docs, f"document runbook {notebook.stem} in docs/runbooks.md"
