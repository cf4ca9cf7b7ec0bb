#!/bin/sh
# Print the CHANGELOG section of one release: release-notes.sh VERSION [CHANGELOG]
# Fails when the changelog has no "## [VERSION]" section or the section is empty,
# so that a release is never tagged without its notes.
set -eu

version="${1:?usage: release-notes.sh VERSION [CHANGELOG]}"
changelog="${2:-CHANGELOG.md}"

notes="$(awk -v heading="## [$version]" '
    index($0, heading) == 1 { found = 1; next }
    found && /^## \[/ { exit }
    found { print }
' "$changelog")"

if [ -z "$(printf '%s' "$notes" | tr -d '[:space:]')" ]; then
    echo "$changelog has no notes under \"## [$version]\": move the Unreleased entries" \
        "to a section for $version before tagging v$version" >&2
    exit 1
fi
printf '%s\n' "$notes"
