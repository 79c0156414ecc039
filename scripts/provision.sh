#!/usr/bin/env bash
# Provision a Debian/Ubuntu machine (or this one) for pathwarden development.
# Idempotent: installs system packages only when a tool is missing, creates .venv
# only when absent, and reinstalls the Python package only when pyproject.toml
# changed since the last successful install.
#
#   bash scripts/provision.sh            # from anywhere
#   PROVISION_FORCE_PIP=1 bash scripts/provision.sh   # force the pip install step
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMP=$VENV/.pathwarden-provisioned
PACKAGES=(postgresql postgresql-client pgbouncer openssh-server openssh-client)

step() { printf '[provision] %s\n' "$*"; }
die() { printf '[provision] ERROR: %s\n' "$*" >&2; exit 1; }

have() {  # command on PATH or in the sbin dirs a non-root PATH may lack
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]
}

# --- 1. system packages -------------------------------------------------------
missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(initdb)
for tool in psql pgbench pgbouncer ssh sshd; do
    have "$tool" || missing+=("$tool")
done
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
    PACKAGES+=(python3-venv)
fi

if ((${#missing[@]} == 0)); then
    step "system packages: ok (initdb, psql, pgbench, pgbouncer, ssh, sshd present)"
else
    step "system packages: missing ${missing[*]}; installing ${PACKAGES[*]}"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${PACKAGES[*]}"
    SUDO=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo; install by hand: ${PACKAGES[*]}"
        SUDO=(sudo)
    fi
    pgbouncer_was_running=0
    pgrep -x pgbouncer >/dev/null 2>&1 && pgbouncer_was_running=1
    sshd_was_running=0
    pgrep -x sshd >/dev/null 2>&1 && sshd_was_running=1
    log=$(mktemp)
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 ||
        ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "apt-get failed (output above)"
    fi
    rm -f "$log"
    # The Debian pgbouncer package may start a system pgbouncer on :6432. Nothing
    # here uses it (tests and benchmarks start their own), so stop one that this
    # install started rather than leave it holding the port.
    if ((pgbouncer_was_running == 0)) && pgrep -x pgbouncer >/dev/null 2>&1; then
        step "system packages: stopping the pgbouncer service the package started"
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            "${SUDO[@]}" systemctl disable --now pgbouncer >/dev/null 2>&1 || true
        else
            "${SUDO[@]}" service pgbouncer stop >/dev/null 2>&1 || true
        fi
    fi
    # Likewise the Debian openssh-server package starts sshd on :22; tests start their own.
    if ((sshd_was_running == 0)) && pgrep -x sshd >/dev/null 2>&1; then
        step "system packages: stopping the ssh service the package started"
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            "${SUDO[@]}" systemctl disable --now ssh >/dev/null 2>&1 || true
        else
            "${SUDO[@]}" service ssh stop >/dev/null 2>&1 || true
        fi
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || die "initdb still missing after install"
    for tool in psql pgbench pgbouncer ssh sshd; do
        have "$tool" || die "$tool still missing after install"
    done
    step "system packages: installed"
fi

# --- 2. Python and virtualenv -----------------------------------------------------
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python >= 3.11"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    die "Python >= 3.11 required, $PY is $("$PY" -c 'import sys; print(sys.version.split()[0])')"
fi
if [[ -x $VENV/bin/python ]]; then
    step "virtualenv: ok ($VENV, $("$VENV/bin/python" -V 2>&1))"
else
    step "virtualenv: creating $VENV with $("$PY" -V 2>&1)"
    "$PY" -m venv "$VENV" || die "could not create $VENV (on Debian: apt-get install python3-venv)"
    rm -f "$STAMP"
fi
"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$VENV uses Python < 3.11; remove it and rerun"

# --- 3. the package and its test/demo extras ----------------------------------------
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -z ${PROVISION_FORCE_PIP:-} && -f $STAMP && $(cat "$STAMP") == "$want" ]] &&
    "$VENV/bin/python" -c 'import pathwarden' >/dev/null 2>&1; then
    step "python package: ok (pyproject.toml unchanged since last install)"
else
    step "python package: pip install -e '.[test,demo]'"
    log=$(mktemp)
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e '.[test,demo]' >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        die "pip install failed (output above)"
    fi
    rm -f "$log"
    echo "$want" >"$STAMP"
    step "python package: installed"
fi
step "done"
