#!/bin/sh
# Install an edgenode node as a systemd service on Debian or Raspberry Pi OS (arm64, x86_64).
#
#   sudo deploy/install.sh [--backend litert|keras] [--key cluster.pem] [--no-start]
#
# Idempotent: run it again to upgrade. It creates the `edgenode` system user, a virtualenv
# under /opt/edgenode with edgenode from this checkout, /etc/edgenode/node.toml from the
# repository's node.toml (only if absent: your edits are kept), the cluster credential
# /etc/edgenode/cluster.pem (copied from --key, or, on the first device of a cluster, created
# with `edgenode keygen`: then copy it to the others), and the systemd unit, then enables
# and starts the service. Default backend: litert on ARM (no TensorFlow: less memory,
# faster start), keras elsewhere. The locations can be moved for a test install with
# EDGENODE_PREFIX, EDGENODE_CONFIG_DIR, EDGENODE_STATE_DIR, EDGENODE_UNIT_DIR; EDGENODE_SYSTEM=0
# skips what needs root (apt, user, systemctl); EDGENODE_PIP_ARGS adds pip options.
set -eu

PREFIX=${EDGENODE_PREFIX:-/opt/edgenode}
CONFIG_DIR=${EDGENODE_CONFIG_DIR:-/etc/edgenode}
STATE_DIR=${EDGENODE_STATE_DIR:-/var/lib/edgenode}
UNIT_DIR=${EDGENODE_UNIT_DIR:-/etc/systemd/system}
SYSTEM=${EDGENODE_SYSTEM:-1}
PIP_ARGS=${EDGENODE_PIP_ARGS:-}
PYTHON=${EDGENODE_PYTHON:-python3}
SOURCE=$(cd "$(dirname "$0")/.." && pwd)
START=1
KEY=

case "$(uname -m)" in
    aarch64 | arm64 | armv7l | armv6l) BACKEND=litert ;;
    *) BACKEND=keras ;;
esac

while [ $# -gt 0 ]; do
    case "$1" in
        --backend) BACKEND=${2:?--backend needs litert or keras}; shift 2 ;;
        --no-start) START=0; shift ;;
        --key) KEY=${2:?--key needs a cluster.pem file}; shift 2 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$BACKEND" in
    litert) EXTRAS=litert ;;
    keras) EXTRAS=keras,litert ;;
    *) echo "install.sh: --backend must be litert or keras, not $BACKEND" >&2; exit 2 ;;
esac

say() { printf 'install.sh: %s\n' "$*"; }

if [ "$SYSTEM" = 1 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        say "installing python3-venv"
        apt-get update -q && apt-get install -y -q python3-venv
    fi
    if ! id -u edgenode >/dev/null 2>&1; then
        say "creating system user edgenode"
        useradd --system --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin edgenode
    fi
fi

if [ ! -x "$PREFIX/venv/bin/python" ]; then
    say "creating virtualenv $PREFIX/venv"
    mkdir -p "$PREFIX"
    "$PYTHON" -m venv "$PREFIX/venv"
fi
say "installing edgenode[${EXTRAS}] from $SOURCE"
# shellcheck disable=SC2086  # PIP_ARGS is a list of options
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check $PIP_ARGS "${SOURCE}[${EXTRAS}]"
install -m 0644 "$SOURCE/README.md" "$PREFIX/README.md"

mkdir -p "$CONFIG_DIR" "$STATE_DIR"
if [ -n "$KEY" ]; then
    say "installing the cluster credential $KEY"
    install -m 0640 "$KEY" "$CONFIG_DIR/cluster.pem"
elif [ ! -f "$CONFIG_DIR/cluster.pem" ]; then
    say "creating a new cluster key (this is the cluster's first device)"
    "$PREFIX/venv/bin/edgenode" --quiet keygen --out "$CONFIG_DIR" --cluster home >/dev/null
    say "copy $CONFIG_DIR/cluster.pem to the other devices (install.sh --key cluster.pem)"
    say "and move $CONFIG_DIR/ca.pem off this device: it can make new members"
fi
if [ "$SYSTEM" = 1 ]; then
    chown root:edgenode "$CONFIG_DIR/cluster.pem"
    chmod 0640 "$CONFIG_DIR/cluster.pem"
fi
if [ -f "$CONFIG_DIR/node.toml" ]; then
    say "keeping $CONFIG_DIR/node.toml"
else
    say "writing $CONFIG_DIR/node.toml (node name $(hostname), backend $BACKEND)"
    sed -e "s/^name = \"pi-kitchen\"/name = \"$(hostname)\"/" \
        -e "s/^backend = \"keras\"/backend = \"$BACKEND\"/" \
        -e "s#^key = \"/etc/edgenode/cluster.pem\"#key = \"$CONFIG_DIR/cluster.pem\"#" \
        "$SOURCE/node.toml" > "$CONFIG_DIR/node.toml.new"
    chmod 0644 "$CONFIG_DIR/node.toml.new"
    mv "$CONFIG_DIR/node.toml.new" "$CONFIG_DIR/node.toml"
fi

mkdir -p "$UNIT_DIR"
sed -e "s#/opt/edgenode#$PREFIX#g" -e "s#/etc/edgenode#$CONFIG_DIR#g" \
    -e "s#/var/lib/edgenode#$STATE_DIR#g" \
    "$SOURCE/deploy/edgenode.service" > "$UNIT_DIR/edgenode.service.new"
mv "$UNIT_DIR/edgenode.service.new" "$UNIT_DIR/edgenode.service"
say "unit $UNIT_DIR/edgenode.service"

if [ "$SYSTEM" = 1 ]; then
    chown -R edgenode:edgenode "$STATE_DIR"
    systemctl daemon-reload
    systemctl enable edgenode.service
    if [ "$START" = 1 ]; then
        systemctl restart edgenode.service
        say "started: journalctl -u edgenode -f"
    fi
fi
say "done"
