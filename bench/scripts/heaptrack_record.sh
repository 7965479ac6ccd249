#!/bin/sh
# The agent's heap over a whole `record` of the loaded FastAPI service, end of the recording
# (writing the outputs) included, which the long run's per-minute RSS samples do not see.
# The load is `cargo xtask bench --long --service fastapi`'s: wrk -t1 -c4 on /ok plus a 300 ms
# /cpu request every ~2 s.
#
#   bench/scripts/heaptrack_record.sh [SECONDS]    (default 240; needs heaptrack and wrk, and
#                                                  target/bench-venv from `cargo xtask bench`)
#
# Prints heaptrack's peak heap and peak RSS, and the biggest allocation sites at the peak.
set -eu
SECS=${1:-240}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$ROOT/target/bench-venv
# STALLSCOPE_BIN: another agent binary. Allocation sites are named only in a build with line
# tables (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only; the release profile has none).
AGENT=${STALLSCOPE_BIN:-$ROOT/target/release/stallscope}
PORT=18765
OUT=/tmp/heaptrack-record
rm -rf "$OUT" && mkdir -p "$OUT"
cd "$ROOT/tests/targets/service"
"$VENV/bin/uvicorn" fastapi_app:app --port $PORT --log-level warning > "$OUT/uvicorn.log" 2>&1 &
UV=$!
trap 'kill $UV 2>/dev/null; kill $WRK 2>/dev/null; kill $CPU 2>/dev/null' EXIT
i=0
until curl -sf "http://127.0.0.1:$PORT/ok" > /dev/null; do
  i=$((i+1)); [ $i -lt 100 ] || { echo "uvicorn did not start" >&2; exit 1; }; sleep 0.1
done
wrk -t1 -c4 -d$((SECS + 30))s "http://127.0.0.1:$PORT/ok" > "$OUT/wrk.log" 2>&1 &
WRK=$!
( while :; do curl -s "http://127.0.0.1:$PORT/cpu" > /dev/null; sleep 2; done ) &
CPU=$!
heaptrack -o "$OUT/heaptrack" "$AGENT" record --pid $UV --duration ${SECS}s -o "$OUT/rec" \
  --format summary > "$OUT/agent.out" 2> "$OUT/agent.err"
FILE=$(ls "$OUT"/heaptrack*.zst "$OUT"/heaptrack*.gz 2>/dev/null | head -n 1)
heaptrack_print -f "$FILE" --print-peaks 1 --peak-limit 12 > "$OUT/peaks.txt" 2>&1 || true
grep -E "^peak heap memory consumption|^peak RSS|^total memory leaked" "$OUT/peaks.txt"
ls -l "$OUT/rec" | awk '{print $5, $9}' | sort -n | tail -n 4
echo "full report: $OUT/peaks.txt"
