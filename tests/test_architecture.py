"""The package's shape: layers import only downwards; each outside library has one home."""

from __future__ import annotations

import ast
from pathlib import Path

import nexus_ops

PACKAGE = Path(nexus_ops.__file__).parent

# Module (or package) name -> layer. 1 foundations, 2 adapters, 3 services, 4 entry points.
LAYERS = {
    "errors": 1, "config": 1, "models": 1, "paths": 1, "redact": 1, "logs": 1, "locks": 1,
    "lazy": 1,
    "process": 2, "opencode": 2, "store": 2,
    "supervisor": 3, "metrics": 3, "alerts": 3, "backup": 3, "runbooks": 3, "security": 3,
    "agent": 4, "client": 4, "daemon": 4, "ui": 4, "cli": 4, "console": 4, "console_voila": 4,
    "recovery": 4, "workload": 3, "demo": 4, "drain": 3, "versions": 3, "entry": 3,
    "remote": 4, "upgrade": 4,
    "__init__": 4, "__main__": 4,
}  # fmt: skip

# Outside libraries that must be used from one place only (module or package).
HOMES = {
    "psutil": "process",
    "sqlite3": "store",
    "papermill": "runbooks",
    "ipywidgets": "ui",
    "uvicorn": "agent",
    "fastapi": "agent",
}


def top(module: str) -> str:
    """'nexus_ops.store.db' -> 'store'; 'nexus_ops' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__") if name != "nexus_ops.__init__" else name] = path
    return found


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_module_has_a_layer() -> None:
    unknown = {top(name) for name in modules()} - set(LAYERS)
    assert not unknown, f"give these modules a layer in tests/test_architecture.py: {unknown}"


def test_imports_point_only_downwards() -> None:
    wrong = []
    for name, path in modules().items():
        layer = LAYERS[top(name)]
        for imported in imports(path):
            if imported.startswith("nexus_ops.") and LAYERS[top(imported)] > layer:
                wrong.append(f"{name} (layer {layer}) imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_each_outside_library_lives_in_one_place() -> None:
    wrong = []
    for name, path in modules().items():
        for imported in imports(path):
            home = HOMES.get(imported.split(".")[0])
            if home is not None and top(name) != home:
                wrong.append(f"{name} imports {imported}, which belongs in nexus_ops.{home}")
    assert not wrong, "\n".join(wrong)


def test_public_surface_is_pinned() -> None:
    assert sorted(nexus_ops.__all__) == [
        "Event", "NexusOpsError", "ServerState", "ServerStatus", "Settings", "__version__",
        "load_settings",
    ]  # fmt: skip
