#!/usr/bin/env bash
# make test's packaging part: what a new user does with the artefacts, outside this checkout.
#  1. build the collection tarball and import it with galaxy-importer (what Galaxy and
#     Automation Hub run on upload; settings in hack/galaxy-importer.cfg);
#  2. `ansible-builder create` on the documented execution environment definition;
#  3. `pip install './controlplane[postgresql]'` into a clean virtualenv, then with the collection
#     installed from the tarball: `gpuaas db upgrade` and `db status` on a new SQLite database,
#     `gpuaas worker --once` and `gpuaas serve` answering /healthz and serving its /docs assets.
# The Python packages come from a wheel cache, .build/packaging/wheels, filled from the package
# index (pinned by requirements.txt) the first time and whenever requirements.txt or
# controlplane/pyproject.toml change; after that the part runs offline.
# Usage: hack/packaging.sh VENV
set -euo pipefail
venv=$(cd "${1:-.venv}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PATH="$venv/bin:$PATH"
# Nothing of the checkout's own setup may help: no ansible.cfg, collection path or PYTHONPATH.
unset ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS PYTHONPATH
work=$(mktemp -d "${TMPDIR:-/tmp}/gpuaas-packaging.XXXXXX")
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
start=$SECONDS
# Each step's line says the wall time so far and the CPU time the tools have used so far.
step() {
  times >"$work/times"   # in this shell: its children's user and system time
  echo "--- packaging: $* ($((SECONDS - start)) s; CPU user+sys $(tail -1 "$work/times" | tr ' ' +))"
}

step "ansible-galaxy collection build"
ansible-galaxy collection build --output-path "$work/dist" . >/dev/null
tarball=$(echo "$work"/dist/gpuaas-slice-*.tar.gz)
tar tzf "$tarball" >"$work/files"
for unwanted in tests/ molecule/ ansible.cfg collections/ controlplane/ lab/; do
  if grep -q "^$unwanted" "$work/files"; then
    echo "packaging: the artefact holds $unwanted, which works only in the repository (galaxy.yml build_ignore)" >&2
    exit 1
  fi
done
grep -qx LICENSE "$work/files" || { echo "packaging: the artefact has no LICENSE" >&2; exit 1; }

step "galaxy-importer $(basename "$tarball")"
mkdir "$work/import"
(cd "$work/import" && GALAXY_IMPORTER_CONFIG="$here/hack/galaxy-importer.cfg" \
  python -m galaxy_importer.main "$tarball" >"$work/import/log" 2>&1) || {
  grep -v '^Loading ' "$work/import/log" >&2; echo "packaging: galaxy-importer rejected the collection" >&2; exit 1; }
grep -E '^(WARNING|ERROR)' "$work/import/log" || true

step "ansible-builder create -f execution-environment.yml"
ansible-builder create -f execution-environment.yml -c "$work/ee" --output-filename Containerfile >/dev/null
for file in Containerfile _build/requirements.txt _build/bindep.txt; do
  [ -s "$work/ee/$file" ] || { echo "packaging: ansible-builder wrote no $file" >&2; exit 1; }
done

step "pip install './controlplane[postgresql]' into a clean virtualenv"
python=$("$venv/bin/python" -c 'import sys; print(sys._base_executable)')
wheels="$here/.build/packaging/wheels"
want=$(cat requirements.txt controlplane/pyproject.toml | sha256sum | cut -d' ' -f1)
# A copy of the control plane's source: pip builds in the tree it is given (build/).
cp -r controlplane "$work/controlplane"
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$want" ]; then
  echo "packaging: filling the wheel cache $wheels from the package index"
  rm -rf "$wheels"
  "$venv/bin/python" -m pip download -q -d "$wheels" setuptools==84.2.1
  "$venv/bin/python" -m pip wheel -q -w "$wheels" -c requirements.txt "$work/controlplane[postgresql]"
  rm -f "$wheels"/gpuaas_control-*.whl "$wheels"/gpuaas-control-*.whl
  echo "$want" >"$wheels/.stamp"
  rm -rf "$work/controlplane/build" "$work/controlplane"/src/*.egg-info
fi
# The clean virtualenv gets no pip of its own (ensurepip alone takes seconds): the suite's pip
# installs into it (--python), which is what the virtualenv's own pip would do.
"$python" -m venv --without-pip "$work/venv"
"$venv/bin/python" -m pip --python "$work/venv/bin/python" install -q --no-index --find-links "$wheels" \
  -c requirements.txt "$work/controlplane[postgresql]"
"$work/venv/bin/python" -c 'import psycopg'   # the extra's driver

step "gpuaas db upgrade, worker --once, serve (collection installed from the tarball)"
# --force: the venv's .pth puts the checkout on sys.path, where ansible-galaxy would find it
ansible-galaxy collection install --force -p "$work/collections" "$tarball" >/dev/null 2>&1
export ANSIBLE_COLLECTIONS_PATH="$work/collections" GPUAAS_DB_URL="sqlite:///$work/control/gpuaas.db"
mkdir "$work/control" "$work/runs"
gpuaas=$work/venv/bin/gpuaas
"$gpuaas" db upgrade
"$gpuaas" db status
printf 'all:\n  hosts: {}\n' >"$work/inventory.yml"
"$gpuaas" worker --once --runs-dir "$work/runs" --inventory "$work/inventory.yml"
port=$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$gpuaas" serve --port "$port" --no-access-log >"$work/serve.log" 2>&1 &
server=$!
"$work/venv/bin/python" - "$port" <<'EOF' || { cat "$work/serve.log" >&2; exit 1; }
import json, sys, time, urllib.request
base = 'http://127.0.0.1:%s' % sys.argv[1]
deadline = time.monotonic() + 30
while True:
    try:
        health = json.load(urllib.request.urlopen(base + '/healthz', timeout=2))
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit('packaging: gpuaas serve did not answer /healthz in 30 s')
        time.sleep(0.2)
docs = urllib.request.urlopen(base + '/docs', timeout=5).read().decode()
print('gpuaas serve: /healthz %s, /docs %d bytes' % (json.dumps(health), len(docs)))
EOF
step "done"
