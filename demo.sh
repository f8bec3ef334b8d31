#!/usr/bin/env bash
# The main job: install autoinstr into .venv, run the example (a Flask shop calling a Bottle inventory
# service over HTTP, each with its own SQLite database) under the agent (default exporter: the embedded
# local store), print what was measured, and start the web UI over that store (in the background).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check . flask bottle requests waitress >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .demo
export AUTOINSTR_STORE="$PWD/.demo/spans.db"
# a UI left running by an earlier run reads the store about to be replaced: stop it first
if [ -f .demo/ui.pid ]; then
  old=$(cat .demo/ui.pid)
  if [ -n "$old" ] && grep -qa "autoinstr" "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f .demo/ui.pid
fi
rm -f "$AUTOINSTR_STORE" "$AUTOINSTR_STORE-wal" "$AUTOINSTR_STORE-shm" "$AUTOINSTR_STORE.ui" \
      "$AUTOINSTR_STORE.ui-wal" "$AUTOINSTR_STORE.ui-shm" .demo/shop.db .demo/inventory.db
echo "== python examples/run_demo.py 300 .demo   (autoinstr-run --service shop|inventory ...)"
python examples/run_demo.py 300 .demo
echo
echo "== autoinstr report --store $AUTOINSTR_STORE"
autoinstr report --store "$AUTOINSTR_STORE" --traces 2
echo
port="${AUTOINSTR_UI_PORT:-4991}"
echo "== autoinstr ui --store $AUTOINSTR_STORE --port $port   (in the background; log: .demo/ui.log)"
nohup autoinstr ui --store "$AUTOINSTR_STORE" --port "$port" >.demo/ui.log 2>&1 </dev/null &
echo $! >.demo/ui.pid
for _ in $(seq 100); do
  if python -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.5).close()" \
       "$port" 2>/dev/null; then
    echo "The web UI is at http://127.0.0.1:$port/  (services, endpoints, traces, search, slow queries, service map)"
    echo "Stop it with: kill \$(cat .demo/ui.pid)"
    exit 0
  fi
  if ! kill -0 "$(cat .demo/ui.pid)" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "autoinstr ui did not start (port $port in use? set AUTOINSTR_UI_PORT); its log:" >&2
cat .demo/ui.log >&2
exit 1
