"""Package attributes loaded on first use (PEP 562), so that importing a package does
not load every module in it (the agent's start would pay for papermill and more).

>>> getattr_, dir_ = lazy_exports("nexus_ops", {"errors": ["NexusOpsError"]}, {})
>>> getattr_("NexusOpsError").__name__, dir_()
('NexusOpsError', ['NexusOpsError'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, homes: Mapping[str, Sequence[str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for the names ``homes`` lists by module.

    A name is imported from ``package.<module>`` when first asked for and kept in
    ``namespace`` (the package's globals), so that later lookups are plain ones.
    """
    module_of = {name: module for module, names in homes.items() for name in names}
    exported = sorted(module_of)

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return exported

    return __getattr__, __dir__
