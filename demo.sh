#!/usr/bin/env bash
# The main job: install autoinstr into .venv, run the example (a Flask shop calling a Bottle inventory
# service over HTTP, each with its own SQLite database) under the agent (default exporter: the embedded
# local store), and print what was measured.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check . flask bottle requests >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .demo
export AUTOINSTR_STORE="$PWD/.demo/spans.db"
rm -f "$AUTOINSTR_STORE" "$AUTOINSTR_STORE-wal" "$AUTOINSTR_STORE-shm" .demo/shop.db .demo/inventory.db
echo "== python examples/run_demo.py 300 .demo   (autoinstr-run --service shop|inventory ...)"
python examples/run_demo.py 300 .demo
echo
echo "== autoinstr report --store $AUTOINSTR_STORE"
autoinstr report --store "$AUTOINSTR_STORE" --traces 2
