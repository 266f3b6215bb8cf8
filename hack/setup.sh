#!/usr/bin/env bash
# Install what the project needs on a Debian 12 machine: apt packages and the virtualenv.
# Idempotent and quiet when everything is already there. Usage: hack/setup.sh VENV_DIR
set -euo pipefail

venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)

# Debian packages the suite and the lab use. Each is installed only when missing.
apt_packages=(git rsync pciutils bc iproute2
  qemu-system-x86 qemu-utils ovmf busybox-static
  libvirt-daemon-system libvirt-dev pkg-config gcc genisoimage dnsmasq-base dnsmasq-utils
  postgresql
  openvswitch-switch nftables ethtool openssh-client systemd
  mmdebstrap e2fsprogs dosfstools mtools fdisk   # Debian images: the lab's cloud guest, the fleet lab's node
  opensm libopensm-dev libibumad-dev   # OpenSM's own parser checks partitions.conf (tests/integrity/opensm.py)
  python3-libvirt openssh-server sudo)   # the SSH test and the fleet lab (make lab-fleet)

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The kernel lab downloads Debian's kernel .deb: apt needs its package lists.
if ! apt-cache policy linux-image-amd64 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
fi

# ansible-core 2.21 needs Python >= 3.12; Debian 12's python3 is 3.11. Use pyenv's 3.12
# explicitly (PYTHON312 overrides), never a shim.
python=${PYTHON312:-}
if [ -z "$python" ]; then
  for candidate in /root/.pyenv/versions/3.12*/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
                   /usr/bin/python3.12 /usr/local/bin/python3.12; do
    if [ -x "$candidate" ]; then python=$candidate; break; fi
  done
fi
if [ -z "$python" ] || ! "$python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "setup: no Python 3.12 found (looked in ~/.pyenv/versions/3.12*); set PYTHON312=/path/to/python3.12" >&2
  exit 1
fi

stamp="$venv/.requirements.sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: building $venv on $python"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# The control plane (controlplane/, its dependencies pinned above): the package itself,
# editable so the checkout is what runs, and its `gpuaas` command in the venv.
src="$here/controlplane/src"
if [ ! -x "$venv/bin/gpuaas" ] || ! "$venv/bin/python" -c 'import os, sys, gpuaas_control
sys.exit(os.path.realpath(gpuaas_control.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep) is False)' "$src" 2>/dev/null; then
  echo "setup: installing the control plane (controlplane/) into $venv"
  "$venv/bin/python" -m pip install -q --no-deps -e "$here/controlplane"
fi

# The checkout is the collection gpuaas.slice: expose it where Ansible looks for collections,
# and to the venv's Python, so the control plane imports the collection's contract as a package.
link="$here/.build/collections/ansible_collections/gpuaas/slice"
if [ ! -L "$link" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$here" "$link"
fi
pth=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpuaas-slice-collection.pth
if [ "$(cat "$pth" 2>/dev/null)" != "$here/.build/collections" ]; then
  echo "$here/.build/collections" > "$pth"
fi
