#!/usr/bin/env bash
# Set up everything ComputeSwarm needs on a fresh Debian machine: system packages (as root)
# and the virtual environment in .venv. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(wireguard-tools wireguard-go nftables iproute2 iputils-ping iperf3 procps postgresql curl g++ python3-dev bubblewrap tmux prometheus chromium chromium-driver)
# The CPU build; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN="torch==2.13.0"

if [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq
    # Packages' daemons (postgresql, prometheus) are not started by installing them: the
    # tests and the local swarm start their own, by PID.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      guard=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi
  fi
else
  echo "setup: not root, skipping system packages (${APT_PACKAGES[*]});" \
       "the tunnel falls back to the 'none' backend and root-only tests skip"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.computeswarm-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "$TORCH_PIN"
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

# DeepSpeed JIT-builds its CPU communication op on first use (~1 min, needs g++ and ninja):
# build it once here, not inside every training worker. Cached in ~/.cache/torch_extensions.
# The build is for this checkout's .venv: torch rewrites build.ninja with the paths of the
# venv that loads it, and ninja then rebuilds, so a cache built by another checkout (a CI
# clone elsewhere) made every DeepSpeed worker of every lease compile it again (~2 min).
op_dir="$(ls -d "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"/*/deepspeed_shm_comm 2>/dev/null | head -1 || true)"  # none yet on a fresh machine
if [ -n "$op_dir" ] && ! grep -qF "$PWD/.venv/" "$op_dir/build.ninja" 2>/dev/null; then
  echo "setup: DeepSpeed's CPU op was built for another checkout; building it for this one"
  rm -rf "$op_dir"
fi
if ! ls "${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"/*/deepspeed_shm_comm/*.so >/dev/null 2>&1; then
  echo "setup: building DeepSpeed's CPU op once"
  DS_ACCELERATOR=cpu PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -c \
    "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" \
    >/dev/null 2>&1 || echo "setup: warning: DeepSpeed's CPU op did not build (g++/ninja?)"
fi
