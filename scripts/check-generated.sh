#!/usr/bin/env bash
# Fails when gen/ differs from what `buf generate` makes of proto/ (gen/ is committed).
set -euo pipefail
cd "$(dirname "$0")/.."
npx --no-install buf generate
if [ -n "$(git status --porcelain -- gen)" ]; then
  echo "gen/ is out of date with proto/: run 'npx buf generate' and commit gen/." >&2
  git status --porcelain -- gen >&2
  exit 1
fi
echo "gen/ matches proto/"
