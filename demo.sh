#!/usr/bin/env bash
# The main job: install autoinstr into .venv, run the example shop (a Flask app) under the agent (default
# exporter: the embedded local store), and print what was measured.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check . flask >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .demo
export AUTOINSTR_STORE="$PWD/.demo/spans.db"
rm -f "$AUTOINSTR_STORE" "$AUTOINSTR_STORE-wal" "$AUTOINSTR_STORE-shm"
echo "== autoinstr-run --service shop python examples/shop_web.py 300"
autoinstr-run --service shop python examples/shop_web.py 300
echo
echo "== autoinstr report --store $AUTOINSTR_STORE"
autoinstr report --store "$AUTOINSTR_STORE" --traces 2
