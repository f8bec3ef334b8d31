#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv, then lint, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]" >/dev/null
# non-editable, as users install it: the .pth hook and sitecustomize_hook come from the wheel
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
.venv/bin/ruff check autoinstr sitecustomize_hook tests integration benchmarks examples
.venv/bin/python -m pytest -q tests integration "$@"
