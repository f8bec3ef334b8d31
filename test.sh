#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv, then lint, unit and integration tests; then
# the same tests under the oldest and newest Pythons we support, where this machine has them.
set -euo pipefail
cd "$(dirname "$0")"
# Debian's uWSGI (threads off by default, unlike pip's build): the uWSGI tests need both kinds
if ! dpkg -s uwsgi-core uwsgi-plugin-python3 >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  (apt-get install -y -q uwsgi-core uwsgi-plugin-python3 >/dev/null 2>&1 \
   || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q uwsgi-core uwsgi-plugin-python3 >/dev/null 2>&1; }) \
   || echo "test.sh: could not install Debian's uwsgi-core/uwsgi-plugin-python3; those uWSGI tests will skip"
fi
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check ".[test]" >/dev/null
# non-editable, as users install it: the .pth hook and sitecustomize_hook come from the wheel
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
.venv/bin/ruff check autoinstr sitecustomize_hook tests integration benchmarks examples
.venv/bin/python -m pytest -q tests integration "$@"

# Other interpreters (AUTOINSTR_TEST_PYTHONS="" skips them): found on PATH or under pyenv.
for version in ${AUTOINSTR_TEST_PYTHONS-3.9 3.13}; do
  interpreter=""
  for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python 2>/dev/null) \
                   "$(command -v "python$version" || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$version'.split('.')))" 2>/dev/null; then
      interpreter=$candidate
    fi
  done
  if [ -z "$interpreter" ]; then
    echo "test.sh: no Python $version on this machine; skipped"
    continue
  fi
  venv=".venv-py$version"
  "$interpreter" -m venv "$venv" >/dev/null
  "$venv"/bin/python -m pip install -q --disable-pip-version-check ".[test]" >/dev/null
  "$venv"/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
  echo "== Python $version ($interpreter)"
  "$venv"/bin/python -m pytest -q -p no:cacheprovider tests integration "$@"
done
