#!/usr/bin/env bash
# The local lab (make lab): build the bundled sample host, then discover slots on it and on
# this machine and validate the sample host's approved slot map, as an operator would.
set -euo pipefail
venv=$(cd "${1:-.venv}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export ANSIBLE_CONFIG="$here/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$here/.build/collections"

echo "lab: building the sample host (two-socket 8-GPU server) under .build/lab/hgx"
"$venv/bin/python" -m tests.sysfs.hosts hgx .build/lab/hgx >/dev/null

echo "lab: discovering slots on this machine and on the sample host"
start=$(date +%s.%N)
"$venv/bin/ansible-playbook" -i lab/inventory.yml playbooks/discover.yml -e gpuaas_hosts=lab
end=$(date +%s.%N)
printf 'lab: discovery and approval finished in %.1f s\n' "$(echo "$end - $start" | bc)"
