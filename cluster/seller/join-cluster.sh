#!/usr/bin/env bash
# Join a ComputeSwarm as a seller from a box with nothing installed (Debian/Ubuntu, root):
#
#   sudo bash join-cluster.sh --coordinator http://HEAD:8443 --invite csi_... [join options]
#
# Installs the system packages and ComputeSwarm (into $COMPUTESWARM_PREFIX), then runs
# `computeswarm seller join` with the arguments given. With systemd, the agent then runs
# as the computeswarm-seller service (restarted on failure, started at boot); without it,
# the agent runs in the foreground. Safe to run again: it reconnects, it never re-enrolls.
#
# COMPUTESWARM_PACKAGE  what pip installs (a name, a wheel, a source path; default: computeswarm)
# COMPUTESWARM_PREFIX   the virtual environment (default: /opt/computeswarm)
set -euo pipefail

PACKAGE=${COMPUTESWARM_PACKAGE:-computeswarm}
PREFIX=${COMPUTESWARM_PREFIX:-/opt/computeswarm}
STATE_DIR=${COMPUTESWARM_SELLER_DIR:-/var/lib/computeswarm/seller}
APT_PACKAGES=(wireguard-tools wireguard-go nftables iproute2 python3 python3-venv)

if [ "$(id -u)" != 0 ]; then
  echo "join-cluster: run as root (it creates network interfaces and namespaces)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "join-cluster: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! "$PREFIX/bin/computeswarm" --version >/dev/null 2>&1; then
  echo "join-cluster: installing $PACKAGE into $PREFIX"
  python3 -m venv "$PREFIX"
  "$PREFIX/bin/pip" install -q --upgrade pip
  "$PREFIX/bin/pip" install -q "$PACKAGE"
  ln -sf "$PREFIX/bin/computeswarm" /usr/local/bin/computeswarm
fi
cs="$PREFIX/bin/computeswarm"

if [ -d /run/systemd/system ]; then
  "$cs" seller join --state-dir "$STATE_DIR" --no-agent "$@"
  unit=$("$PREFIX/bin/python" -c 'import computeswarm.configs as c, pathlib; print(pathlib.Path(c.__file__).parent / "computeswarm-seller.service")')
  sed -e "s|/usr/local/bin/computeswarm|$cs|" -e "s|/var/lib/computeswarm/seller|$STATE_DIR|" \
    "$unit" > /etc/systemd/system/computeswarm-seller.service
  systemctl daemon-reload
  systemctl enable --now computeswarm-seller.service
  echo "join-cluster: joined; the agent runs as computeswarm-seller.service"
  echo "  status: computeswarm seller status --state-dir $STATE_DIR"
else
  exec "$cs" seller join --state-dir "$STATE_DIR" "$@"
fi
