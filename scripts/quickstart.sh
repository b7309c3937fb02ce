#!/usr/bin/env bash
# Quickstart: build weft, generate sample Segment events, run examples/quickstart.toml.
#
#   ./scripts/quickstart.sh                 # 1,000,000 events, 2 workers
#   EVENTS=100000 WORKERS=1 ./scripts/quickstart.sh
#
# Needs only a Rust toolchain: no external services.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}"
EVENTS="${EVENTS:-1000000}"
WORKERS="${WORKERS:-2}"
OUT=out/quickstart

echo "==> building weft (release)"
cargo build --release --quiet -p weft-engine -p weft-bench --bin weft --bin weft-gen
BIN="$CARGO_TARGET_DIR/release"

mkdir -p "$OUT"
if [[ ! -f "$OUT/events.jsonl" || "$(cat "$OUT/.events" 2>/dev/null)" != "$EVENTS" ]]; then
  echo "==> generating $EVENTS sample events into $OUT/events.jsonl"
  "$BIN/weft-gen" --events "$EVENTS" --seed 42 --out "$OUT/events.jsonl"
  echo "$EVENTS" > "$OUT/.events"
fi

echo "==> weft run examples/quickstart.toml --workers $WORKERS"
"$BIN/weft" run examples/quickstart.toml --workers "$WORKERS"

cat <<MSG
==> results
  $OUT/counts.jsonl   changes to the per-type / per-event / per-reason counts: {"time","diff","data"}
  $OUT/errors.jsonl   rejected records with their reason and original bytes (dead letters)
  Try: $BIN/weft validate examples/quickstart.toml
MSG
