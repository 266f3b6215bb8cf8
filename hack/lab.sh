#!/usr/bin/env bash
# The local lab (make lab, make lab-up, make lab-down): the whole product on this machine.
# See lab/lab.py. Usage: hack/lab.sh VENV [run|up|down]
set -euo pipefail
venv=$(cd "${1:-.venv}" && pwd)
command=${2:-run}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" lab/lab.py "$command"
