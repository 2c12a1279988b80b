#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (wheels.txt) for its Python and platform, on this
# machine: the device has no network. Usage:
#   tools/device-check/fetch-wheels.sh                 # -> .whl/ (cp312, manylinux x86-64)
#   tools/device-check/fetch-wheels.sh --python 3.11 --dest /tmp/whl311   # a local dry run's set
# .whl/ is kept out of git through .git/info/exclude (never commit it) and travels with the
# device call because `run`'s carry names it. One version of each package: the folder is replaced.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
PYVER=3.12  # the device's python3 (KINDS.md: Python 3.12.3)
DEST=$ROOT/.whl
LIMIT_MIB=45  # the working tree and carried paths travel together, 64 MiB at most
while [ $# -gt 0 ]; do
  case $1 in
    --python) PYVER=${2:?--python needs a version like 3.12}; shift 2 ;;
    --dest) DEST=${2:?--dest needs a folder}; shift 2 ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "fetch-wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ ! $PYVER =~ ^3\.[0-9]+$ ]]; then
  echo "fetch-wheels.sh: --python: expected a version like 3.12, got '$PYVER'" >&2; exit 2
fi

if [ "$DEST" = "$ROOT/.whl" ]; then  # keep the repository's wheel folder out of git
  exclude=$(cd "$ROOT" && git rev-parse --path-format=absolute --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
fi

mapfile -t pins < <(grep -vE '^\s*(#|$)' "$HERE/wheels.txt")
tmp=$(mktemp -d "${DEST%/}.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$tmp" "${pins[@]}"

n=$(find "$tmp" -maxdepth 1 -name '*.whl' | wc -l)
if [ "$n" -ne "${#pins[@]}" ]; then
  echo "fetch-wheels.sh: got $n wheels for ${#pins[@]} pins in wheels.txt" >&2; exit 1
fi
kib=$(du -sk "$tmp" | cut -f1)
if [ "$kib" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "fetch-wheels.sh: the wheels take $((kib / 1024)) MiB, over the ${LIMIT_MIB} MiB allowed" >&2
  exit 1
fi
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
ls -l "$DEST"
echo "fetch-wheels.sh: $n wheels, $((kib / 1024)) MiB in $DEST (Python $PYVER)"
