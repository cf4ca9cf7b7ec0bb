"""Licences of the installed packages against the licences nexus-ops may ship with.

A licence text is read as pip-licenses gives it: alternatives separated by ``;``
(trove classifiers) or `` OR `` (SPDX) need one allowed part; parts joined by
`` AND `` all need to be allowed. A part is allowed when it contains one of the
allowed names as a word (``BSD`` allows ``BSD-3-Clause`` and ``BSD License``;
``MIT`` does not allow ``Limited``).

>>> licence_allowed("Apache-2.0 OR GPL-2.0"), licence_allowed("MIT AND GPL-3.0")
(True, False)
>>> licence_allowed("Proprietary, limited use")
False
"""

from __future__ import annotations

import re

# The same list as .github/licence-allowlist.txt (the CI's licence check), plus the
# Python licences that permissive packages carry beside their own.
ALLOWED = (
    "MIT",
    "BSD",
    "Apache",
    "ISC",
    "Python Software Foundation",
    "PSF-2.0",
    "MPL-2.0",
    "Mozilla Public License 2.0",
    "Zlib",
    "0BSD",
    "CC0-1.0",
    "Unlicense",
    "CNRI-Python",
    "Public Domain",
)
UNKNOWN = ("UNKNOWN", "")
_ALTERNATIVES = re.compile(r"\s*;\s*|\s+OR\s+", re.IGNORECASE)
_BOTH = re.compile(r"\s+AND\s+", re.IGNORECASE)
_IGNORED = {"DFSG approved", "OSI Approved"}


def _part_allowed(part: str, allowed: tuple[str, ...]) -> bool:
    text = part.strip().strip("()")
    return any(
        re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) for name in allowed
    )


def licence_allowed(licence: str, allowed: tuple[str, ...] = ALLOWED) -> bool:
    """Whether a package under ``licence`` may be shipped (see the module's docstring)."""
    options = [o for o in _ALTERNATIVES.split(licence.strip()) if o and o not in _IGNORED]
    return any(
        all(_part_allowed(part, allowed) for part in _BOTH.split(option)) for option in options
    )


def is_unknown(licence: str) -> bool:
    return licence.strip().upper() in UNKNOWN
