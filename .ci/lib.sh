# Shared by .ci/test and .ci/demo: system packages and the project's .venv.
# Sourced, not run. Works on a fresh Debian machine that has python3, as root
# (or with sudo); re-runs are quick because nothing present is installed again.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$REPO/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 DEBIAN_FRONTEND=noninteractive

say() { printf '\n== %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else return 1
    fi
}

# apt_install PACKAGE...: install what is missing, without starting services.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if ! command -v apt-get >/dev/null; then
        echo "not a Debian system: install $* yourself" >&2
        return 1
    fi
    say "apt-get install $*"
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Packages such as nginx would start a system service on install.
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d' \
            && made_policy=1
    fi
    local rc=0
    as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends "$@" || rc=$?
    if [ -n "$made_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    return "$rc"
}

python_can_make_venvs() {
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1
}

# ensure_python_venv: make sure "$PYTHON" can create a venv with pip.
ensure_python_venv() {
    if ! command -v "$PYTHON" >/dev/null; then
        apt_install python3 python3-venv || true
    elif ! python_can_make_venvs; then
        apt_install python3-venv || true
    fi
    command -v "$PYTHON" >/dev/null && python_can_make_venvs || {
        echo "$PYTHON cannot create virtual environments (install python3-venv)" >&2
        return 1
    }
}

# ensure_test_tools: the programs the integration tests run.
ensure_test_tools() {
    local missing=()
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
    command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
    command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
    command -v openssl >/dev/null || missing+=(openssl)
    # tests/integration/test_status_page.py renders the HTML status page in
    # headless Chromium (screenshots and --dump-dom).
    command -v chromium >/dev/null || missing+=(chromium)
    # tests/integration/test_proxy_fingerprints.py runs them as plain
    # processes on loopback (apt_install starts no service).
    command -v apache2 >/dev/null || [ -x /usr/sbin/apache2 ] || missing+=(apache2)
    command -v caddy >/dev/null || [ -x /usr/bin/caddy ] || missing+=(caddy)
    # promtool validates and unit-tests contrib/prometheus (the service is
    # not started: apt_install blocks service starts).
    command -v promtool >/dev/null || missing+=(prometheus)
    # tests/integration/test_workers.py: a main process and a worker share a
    # PostgreSQL database and replicate over Redis (plain child processes on
    # loopback; apt_install starts no service).
    command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
    command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        || missing+=(postgresql)
    # psycopg2 (Synapse's PostgreSQL driver, for the worker tests) builds
    # from source: it needs pg_config, a C compiler and Python's headers.
    command -v pg_config >/dev/null || missing+=(libpq-dev)
    command -v gcc >/dev/null || missing+=(gcc)
    "$PYTHON" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        >/dev/null 2>&1 || missing+=(python3-dev)
    [ "${#missing[@]}" -gt 0 ] || return 0
    apt_install "${missing[@]}" && return 0
    # One by one, so that one unknown name does not block the others.
    local pkg
    for pkg in "${missing[@]}"; do
        apt_install "$pkg" && continue
        # nginx-light is a transitional or missing package on newer releases.
        [ "$pkg" = nginx-light ] && apt_install nginx && continue
        echo "could not install $pkg; the tests that need it will fail" >&2
    done
}

# ensure_demo_tools: what the demo's own world needs (a network namespace
# with nftables, nginx in it), when this shell can install as root. Without
# them the demo falls back to a Synapse alone and says why.
ensure_demo_tools() {
    [ "$(id -u)" = 0 ] || return 0
    local missing=()
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
    command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
    command -v setpriv >/dev/null || missing+=(util-linux)
    [ "${#missing[@]}" -gt 0 ] || return 0
    apt_install "${missing[@]}" && return 0
    local pkg
    for pkg in "${missing[@]}"; do
        apt_install "$pkg" && continue
        [ "$pkg" = nginx-light ] && apt_install nginx && continue
        echo "could not install $pkg; the demo runs without its own world" >&2
    done
    return 0
}

# ensure_venv [EXTRAS]: $REPO/.venv with the project and its extras
# ("test,lint" by default; "none" for the package alone, as the demo needs).
ensure_venv() {
    local extras="${1:-test,lint}"
    ensure_python_venv
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "creating $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    # Editable install: code changes need no reinstall, only pyproject.toml does.
    local stamp="$VENV/.synapse-fedhealth-installed"
    local want
    want="$(cat "$REPO/pyproject.toml" - <<<"$REPO $extras" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && (cd / && "$VENV/bin/python" -c 'import synapse_fedhealth') 2>/dev/null; then
        return 0
    fi
    local target="$REPO[$extras]"
    [ "$extras" = none ] && target="$REPO"
    say "pip install -e '$target'"
    "$VENV/bin/python" -m pip install -q -e "$target" || return 1
    printf '%s\n' "$want" >"$stamp"
}

# The oldest Synapse we support (synapse_fedhealth/synapse_versions.py), with
# the dependency versions of its time.
OLDEST_SYNAPSE="$(sed -n 's/^OLDEST_SUPPORTED = "\(.*\)"$/\1/p' "$REPO/synapse_fedhealth/synapse_versions.py")"
OLDEST_VENV="$REPO/.venv-oldest"

# ensure_oldest_venv: $OLDEST_VENV with Synapse $OLDEST_SYNAPSE, this package
# and the test tools, every version held to constraints/synapse-<it>.txt (the
# test tools are the newest that fit; `-c` does not reach pip's isolated
# build of this package, which needs a newer setuptools).
ensure_oldest_venv() {
    local constraints="$REPO/constraints/synapse-$OLDEST_SYNAPSE.txt"
    [ -n "$OLDEST_SYNAPSE" ] && [ -f "$constraints" ] || {
        echo "no constraints file for the oldest Synapse ($constraints)" >&2
        return 1
    }
    ensure_python_venv || return 1
    if [ ! -x "$OLDEST_VENV/bin/python" ] || ! "$OLDEST_VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "creating $OLDEST_VENV"
        rm -rf "$OLDEST_VENV"
        "$PYTHON" -m venv "$OLDEST_VENV" || return 1
    fi
    local stamp="$OLDEST_VENV/.synapse-fedhealth-installed"
    local want
    want="$(cat "$REPO/pyproject.toml" "$constraints" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && (cd / && "$OLDEST_VENV/bin/python" -c 'import synapse_fedhealth') 2>/dev/null; then
        return 0
    fi
    say "pip install -c constraints/synapse-$OLDEST_SYNAPSE.txt matrix-synapse==$OLDEST_SYNAPSE"
    "$OLDEST_VENV/bin/python" -m pip install -q -c "$constraints" -e "$REPO" \
        "matrix-synapse==$OLDEST_SYNAPSE" pytest hypothesis trustme || return 1
    printf '%s\n' "$want" >"$stamp"
}
