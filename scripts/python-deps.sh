#!/usr/bin/env bash
# Python packages the tests and benchmarks use as independent readers and
# baselines (pyarrow, DuckDB) and as a real Segment client library
# (segment-analytics-python), installed with `pip install --target` into the
# cache directory: no virtualenv, no user site, no PEP 668 refusal.
#
#   eval "$(scripts/python-deps.sh)"   # installs if missing, prints PYTHONPATH=...
#
# Settings (environment):
#   WEFT_CACHE_DIR   where packages go (default ~/.cache/weft); they land in
#                    $WEFT_CACHE_DIR/python
set -euo pipefail
CACHE="${WEFT_CACHE_DIR:-$HOME/.cache/weft}"
TARGET="$CACHE/python"
PACKAGES=(pyarrow==26.0.1 duckdb==2.0.0 segment-analytics-python==2.4.0)
STAMP="$TARGET/.weft-installed-$(printf '%s' "${PACKAGES[*]}" | md5sum | cut -c1-12)"
if [[ ! -f "$STAMP" ]]; then
  mkdir -p "$TARGET"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$TARGET" --upgrade "${PACKAGES[@]}" >&2
  touch "$STAMP"
fi
echo "PYTHONPATH=$TARGET"
