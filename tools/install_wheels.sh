#!/usr/bin/env bash
# Install the wheels `make gpu-wheels` brought (tools/gpu_wheels.py) into a folder, without network:
#
#   bash tools/install_wheels.sh WHEELS TARGET [PYTHON]      then: export PYTHONPATH=TARGET:$PYTHONPATH
#
# WHEELS holds *.whl files, directly or in parts-1/ and parts-2/; a wheel cut in two (NAME.part in each, with
# NAME.sha256) is put back together in a temporary folder and checked against its sha256 first. Only the
# wheels whose package PYTHON lacks, or has at an older version, are installed: a newer one already there
# (a pure-Python helper such as packaging or typing-extensions) stays in use. Exits non-zero when a half is
# missing, a checksum differs or pip fails.
set -euo pipefail
WHEELS=${1:?usage: install_wheels.sh WHEELS TARGET [PYTHON]}
TARGET=${2:?usage: install_wheels.sh WHEELS TARGET [PYTHON]}
PY=${3:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
wheels=("$WHEELS"/*.whl "$WHEELS"/parts-*/*.whl)
for sum in "$WHEELS"/parts-*/*.sha256; do
  name=$(basename "$sum" .sha256)
  [ -e "$work/$name" ] && continue  # its sha256 lies beside both halves
  first="$WHEELS/parts-1/$name.part" second="$WHEELS/parts-2/$name.part"
  for half in "$first" "$second"; do
    [ -f "$half" ] || { echo "error: $half is missing: copy both $WHEELS/parts-1 and $WHEELS/parts-2"; exit 1; }
  done
  cat "$first" "$second" >"$work/$name"
  [ "$(sha256sum "$work/$name" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$sum")" ] \
    || { echo "error: $name put back together from its halves does not match its sha256"; exit 1; }
  echo "wheels: $name put back together from its two halves (sha256 ok)"
  wheels+=("$work/$name")
done
[ ${#wheels[@]} -gt 0 ] || { echo "error: no wheels in $WHEELS"; exit 1; }

# which of them PYTHON lacks (or has older); wheel file names are NAME-VERSION-...
mapfile -t todo < <("$PY" - "${wheels[@]}" <<'EOF'
import importlib.metadata as md
import sys
from pathlib import Path

try:
    from packaging.version import Version
except ImportError:  # cannot compare: install ours
    Version = None
for w in sys.argv[1:]:
    name, version = Path(w).name.split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(w)
        continue
    if Version is None or Version(have) < Version(version):
        print(w)
    else:
        print(f"wheels: {name} {have} already there (brought: {version})", file=sys.stderr)
EOF
)
if [ ${#todo[@]} -gt 0 ] && "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$TARGET" "${todo[@]}"
elif [ ${#todo[@]} -gt 0 ]; then
  # a Python without pip: these wheels have no .data folders, so installing one into a target is unpacking
  # it, executable bits (raylet, gcs_server) included
  echo "wheels: $PY has no pip: unpacking them"
  "$PY" - "$TARGET" "${todo[@]}" <<'EOF'
import os
import sys
import zipfile

for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, sys.argv[1])
            if (info.external_attr >> 16) & 0o111:
                os.chmod(path, 0o755)
EOF
fi
echo "wheels: ${#todo[@]} of ${#wheels[@]} installed into $TARGET"
