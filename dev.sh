#!/usr/bin/env bash
# Developer entry point. On a fresh machine with Python 3.11+ and apt:
#   ./dev.sh demo    simulated treadmill, mock GPIO, embedded MQTT broker, live terminal view
#   ./dev.sh test    lint, type checks, architecture check, firmware build and tests, whole suite
# Both create .venv on first use and install the mosquitto broker with apt when it is missing
# (the demo and the tests each start their own on a free loopback port); `test` also installs
# the AVR toolchain and simavr.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

die() { echo "dev.sh: $*" >&2; exit 1; }

ensure_python() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$("$PYTHON" -V) is too old: Python 3.11 or newer is needed (Raspberry Pi OS Bookworm ships 3.11)"
}

ensure_venv() {
    local extras=$1
    local stamp="$VENV/.installed-$extras"
    ensure_python
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV" || die "could not create $VENV: install python3-venv (sudo apt install python3-venv)"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
        touch "$stamp"
    fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_mosquitto() {
    if [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null; then return; fi
    if ! command -v apt-get >/dev/null; then
        [ "$1" = optional ] && { echo "dev.sh: no mosquitto and no apt-get: the demo falls back to amqtt" >&2; return; }
        die "mosquitto is missing and apt-get is not available: install the mosquitto broker"
    fi
    echo "dev.sh: installing mosquitto (Debian package): the demo and the tests start their own broker" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    # The tests start their own broker on a free port; the packaged system service is not needed.
    as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
}

ensure_firmware_toolchain() {
    # avr-gcc + avr-libc + binutils-avr build the firmware; simavr + libsimavr-dev + libelf-dev
    # build the harness that runs it on an emulated ATmega328P (firmware/emu).
    if command -v avr-gcc >/dev/null && command -v avr-size >/dev/null \
        && [ -f /usr/lib/avr/include/avr/io.h ] && [ -f /usr/include/simavr/sim_avr.h ] \
        && [ -f /usr/include/libelf.h ]; then return; fi
    command -v apt-get >/dev/null || die "the AVR toolchain or simavr is missing and apt-get is not available: install gcc-avr avr-libc binutils-avr simavr libsimavr-dev libelf-dev"
    echo "dev.sh: installing the AVR toolchain and simavr (Debian packages) for the firmware" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
        gcc-avr avr-libc binutils-avr simavr libsimavr-dev libelf-dev make gcc >/dev/null
}

cmd=${1:-help}
shift || true
case "$cmd" in
    demo)
        ensure_venv demo
        # The demo starts its own mosquitto on a free loopback port for the telemetry: the
        # same broker as production and the tests (amqtt stays a fallback without apt).
        ensure_mosquitto optional
        exec "$VENV/bin/treadmill" demo "$@"
        ;;
    test)
        ensure_venv dev,demo,plot
        ensure_mosquitto required
        ensure_firmware_toolchain
        echo "== firmware: AVR image and budgets, native unit tests (ASan/UBSan), decoder fuzz"
        make -s -C firmware all native test fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
        make -s -C firmware/emu
        # The conformance suite (tests/conformance) must run all three implementations here.
        export TREADMILL_CONFORMANCE_REQUIRED=1
        echo "== ruff"; "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check .
        echo "== mypy (strict)"; "$VENV/bin/mypy"
        echo "== safety core: 100 % branch coverage"
        # Every module of the safety core (.ci/safety-core.txt), the config rules and the
        # mode-transition table.
        cov=(--cov=controller.rules.config_rules --cov=controller.rules.transitions)
        while read -r path; do
            case "$path" in ''|'#'*) continue ;; esac
            path=${path%.py}
            cov+=("--cov=${path//\//.}")
        done < .ci/safety-core.txt
        "$VENV/bin/pytest" -q -p no:cacheprovider tests/core tests/test_architecture.py \
            "${cov[@]}" --cov-branch \
            --cov-report=term-missing:skip-covered --cov-fail-under=100
        echo "== the rest of the test suite"
        "$VENV/bin/pytest" -q -p no:cacheprovider --ignore=tests/core \
            --ignore=tests/test_architecture.py "$@"
        ;;
    *)
        sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
        ;;
esac
