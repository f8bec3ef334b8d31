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
# Debian's PostgreSQL and MariaDB servers for the tests on real databases (integration/dbservers.py), and what
# building mysqlclient needs. Once they are all in, AUTOINSTR_REQUIRE_DB_SERVERS=1: those tests fail, never skip.
db_packages="postgresql mariadb-server-core mariadb-client-core libmariadb-dev pkg-config"
# a C compiler: mysqlclient is built with it, and autoinstr's optional speedups (hatch_build.py)
if ! command -v cc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev >/dev/null 2>&1 || true
fi
apt_install() {  # quiet and idempotent; apt-get update only when the install needs it; one more try on a hiccup
  for attempt in 1 2; do
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null 2>&1 || sleep 5
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
    [ "$attempt" = 1 ] && sleep 10
  done
  return 1
}
# shellcheck disable=SC2086
if ! dpkg -s $db_packages >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # shellcheck disable=SC2086
  apt_install $db_packages || for package in $db_packages; do  # then whatever can be had: the rest skip
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 || true
  done
fi
# shellcheck disable=SC2086
if dpkg -s $db_packages >/dev/null 2>&1; then
  export AUTOINSTR_REQUIRE_DB_SERVERS="${AUTOINSTR_REQUIRE_DB_SERVERS:-1}"
else
  echo "test.sh: could not install Debian's $db_packages; the tests on real PostgreSQL/MariaDB servers will skip"
fi
# The statsd end-to-end tests (integration/test_statsd.py): Graphite's carbon-cache and whisper from Debian,
# Etsy's statsd daemon from npm into .npm-statsd/ (git-ignored), run with the machine's node. Once they are
# all in, AUTOINSTR_REQUIRE_STATSD_SERVERS=1: those tests fail, never skip.
statsd_packages="graphite-carbon python3-whisper"
# shellcheck disable=SC2086
if ! dpkg -s $statsd_packages >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # shellcheck disable=SC2086
  apt_install $statsd_packages || true
fi
if [ ! -f .npm-statsd/node_modules/statsd/stats.js ] && command -v npm >/dev/null; then
  mkdir -p .npm-statsd
  npm install --prefix .npm-statsd --no-audit --no-fund --silent statsd@0.9.0 >/dev/null 2>&1 || true
fi
# shellcheck disable=SC2086
if dpkg -s $statsd_packages >/dev/null 2>&1 && command -v node >/dev/null \
   && [ -f .npm-statsd/node_modules/statsd/stats.js ]; then
  export AUTOINSTR_REQUIRE_STATSD_SERVERS="${AUTOINSTR_REQUIRE_STATSD_SERVERS:-1}"
else
  echo "test.sh: could not install graphite-carbon/python3-whisper (Debian) or statsd (npm); the statsd" \
       "end-to-end tests will skip"
fi
# Headless Chromium for the UI tests (driven by Playwright for Python with executable_path) and wrk for the
# load tests and benchmarks, from Debian. Once they are in, AUTOINSTR_REQUIRE_BROWSER=1 / AUTOINSTR_REQUIRE_WRK=1:
# those tests fail, never skip.
if ! dpkg -s chromium chromium-driver wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt_install chromium chromium-driver || true
  apt_install wrk || true
fi
if command -v chromium >/dev/null; then
  export AUTOINSTR_REQUIRE_BROWSER="${AUTOINSTR_REQUIRE_BROWSER:-1}"
else
  echo "test.sh: could not install Debian's chromium; the UI browser tests will skip"
fi
if command -v wrk >/dev/null; then
  export AUTOINSTR_REQUIRE_WRK="${AUTOINSTR_REQUIRE_WRK:-1}"
else
  echo "test.sh: could not install Debian's wrk; the load tests will skip"
fi
# The reliability suite's disk faults (integration/reliability/test_reliability_faults.py: a full and a
# read-only tmpfs, an ext4 image turning read-only under the open store) mount filesystems: root only. As root
# (CI), AUTOINSTR_REQUIRE_ROOT_FAULTS=1: those tests fail, never skip.
if [ "$(id -u)" = 0 ]; then
  export AUTOINSTR_REQUIRE_ROOT_FAULTS="${AUTOINSTR_REQUIRE_ROOT_FAULTS:-1}"
else
  echo "test.sh: not running as root; the disk fault tests (full, read-only disk) will skip"
fi
# What CI keeps: the UI browser tests' screenshots go to $AUTOINSTR_ARTIFACTS_DIR/screenshots (artifacts/ at
# the root unless set, git-ignored); its path is printed at the end, whatever the outcome.
export AUTOINSTR_ARTIFACTS_DIR="${AUTOINSTR_ARTIFACTS_DIR:-$PWD/artifacts}"
mkdir -p "$AUTOINSTR_ARTIFACTS_DIR/screenshots"
trap 'echo "test.sh: artifacts (UI screenshots) in $AUTOINSTR_ARTIFACTS_DIR/screenshots/"' EXIT
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
# the test extra; without mysqlclient when it can't be built here (no libmariadb-dev): its tests skip then
install_test_extra() {
  "$1" -m pip install -q --disable-pip-version-check ".[test]" >/dev/null && return 0
  if [ "${AUTOINSTR_REQUIRE_DB_SERVERS-}" = 1 ]; then
    echo "test.sh: pip install '.[test]' failed, though Debian's $db_packages are in"
    return 1
  fi
  echo "test.sh: installing .[test] failed; trying again without mysqlclient"
  local deps
  mapfile -t deps < <("$1" -c '
import re
block = re.search(r"^test\s*=\s*\[(.*?)\][ \t]*$", open("pyproject.toml").read(), re.S | re.M).group(1)
print("\n".join(d for d in re.findall(r"\"([^\"]+)\"", block) if not d.startswith("mysqlclient")))')
  "$1" -m pip install -q --disable-pip-version-check . "${deps[@]}" >/dev/null
}
install_test_extra .venv/bin/python
# atheris (coverage-guided fuzzing, tests/test_fuzz_atheris.py) where it installs: it builds against libFuzzer
# and has no wheel for every Python; its tests skip without it (hypothesis fuzzes the same parsers anyway)
.venv/bin/python -m pip install -q --disable-pip-version-check atheris >/dev/null 2>&1 || true
# non-editable, as users install it: the .pth hook and sitecustomize_hook come from the wheel
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
# the optional compiled speedups, built in place as well: the unit tests import autoinstr from the source tree
# (the wheel installed above has its own). With a C compiler here, their tests must run, not skip.
build_speedups() {
  if command -v "${CC:-cc}" >/dev/null; then
    export AUTOINSTR_REQUIRE_SPEEDUPS=1
    "$1" hatch_build.py >/dev/null
  else
    echo "test.sh: no C compiler; autoinstr runs in pure Python and the compiled speedups' tests skip"
  fi
}
build_speedups .venv/bin/python
.venv/bin/ruff check autoinstr sitecustomize_hook tests integration benchmarks examples hatch_build.py
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
  install_test_extra "$venv"/bin/python
  "$venv"/bin/python -m pip install -q --disable-pip-version-check atheris >/dev/null 2>&1 || true
  "$venv"/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps . >/dev/null
  build_speedups "$venv"/bin/python
  echo "== Python $version ($interpreter)"
  # everything again but the destination-fault matrix and the browser pages (about 3 minutes of waiting on
  # timeouts and Chromium, the same on every Python): the suite stays well within CI's time
  "$venv"/bin/python -m pytest -q -p no:cacheprovider tests integration \
    --ignore=integration/reliability/test_reliability_faults.py --ignore=integration/test_ui_browser.py "$@"
done
