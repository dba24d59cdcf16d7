#!/usr/bin/env bash
# Instructions a tree's server spends on N churned sessions, counted by valgrind's callgrind:
# the event loop thread's count repeats within 1 % whatever else the machine does, where
# timings on this 2-core machine move by 10 % between identical builds. Per-session cost =
# the difference of two runs (N1, N2) divided by N2 - N1, which cancels the start and the stop.
#
#   bench/instructions.sh ROOT N TAG      # e.g. a `git archive REV` exported to ROOT
#   BENCH_INSTRUCTIONS_SERVER=uvicorn-fast bench/instructions.sh ROOT N TAG    # or uvicorn-websockets
#
# daphne (or the fast command) at default settings (INFO lines), a fresh SQLite registry, 5 concurrent clients
# (bench/loadgen.py, with its progress bar). Prints the instructions of the event loop's thread (the
# process's busiest) and of all threads. Compare the loop's: the database thread's count moves by
# about 10 % between runs of one tree, with how the writer happens to batch, and the other threads'
# with how long the run took (timers), so a loaded machine inflates the total but not the loop's.
set -euo pipefail
ROOT=$1; N=$2; TAG=$3
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=$HERE/.venv/bin/python
OUT=${BENCH_INSTRUCTIONS_DIR:-/tmp/wss-instructions}; mkdir -p "$OUT"
DB=$OUT/$TAG-$N.sqlite3; rm -f "$DB"* "$OUT/$TAG-$N.out"*
(cd "$ROOT" && DATABASE_URL=sqlite:///$DB "$PY" manage.py migrate -v0)
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
case "${BENCH_INSTRUCTIONS_SERVER:-daphne}" in
  daphne) SERVER_COMMAND=("$HERE/.venv/bin/daphne" -b 127.0.0.1 -p "$PORT") ;;
  uvicorn-fast|uvicorn-websockets)  # the README's fast command, or the same on uvicorn's older protocol
    NAME=$(echo "${BENCH_INSTRUCTIONS_SERVER#uvicorn-}" | tr a-z A-Z)
    read -ra OPTIONS <<< "$(cd "$HERE" && "$PY" -c "from bench import targets; print(' '.join(targets.UVICORN_${NAME}_OPTIONS))")"
    SERVER_COMMAND=("$HERE/.venv/bin/uvicorn" "${OPTIONS[@]}" --host 127.0.0.1 --port "$PORT") ;;
  *) echo "BENCH_INSTRUCTIONS_SERVER: daphne, uvicorn-fast or uvicorn-websockets" >&2; exit 2 ;;
esac
(cd "$ROOT" && exec env PYTHONHASHSEED=0 DATABASE_URL=sqlite:///$DB DJANGO_DEBUG=false WSS_RATE_LIMIT=0 \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$TAG-$N.out" --dump-instr=no --separate-threads=yes \
  "$PY" "${SERVER_COMMAND[@]}" wssproject.asgi:application > "$OUT/$TAG-$N.log" 2>&1) &
SERVER=$!
for _ in $(seq 1 600); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 1; done
(cd "$HERE" && "$PY" -c "
import asyncio, tempfile
from bench import loadgen
async def main():
    figures = await loadgen.churn('ws://127.0.0.1:$PORT/ws', workspace=tempfile.mkdtemp(), sessions=$N,
                                  concurrency=5, timeout=900, desc='churn $TAG')
    assert not figures.errors, dict(figures.errors)
asyncio.run(main())
")
sleep 2
kill -TERM "$SERVER"; wait "$SERVER" || true
TOTALS=$(cat "$OUT/$TAG-$N.out"-* | sed -n 's/^summary: //p' | sort -n)
echo "event loop thread: $(echo "$TOTALS" | tail -1)"
echo "all threads: $(echo "$TOTALS" | awk '{s += $1} END {printf "%d\n", s}')"
