#!/usr/bin/env bash
# The whole test suite (make test, and CI through .ci/run): ansible-test sanity, ansible-lint,
# the module docs check, the molecule scenarios, the packaging checks (hack/packaging.sh: the
# built collection through galaxy-importer, ansible-builder create on the EE definition, the
# control plane installed into a clean virtualenv), then the unit and service tests with pytest
# (last, so its summary line closes the output).
# Usage: hack/test.sh VENV [sanity|lint|docs|molecule|packaging|units]...
set -uo pipefail
venv=$(cd "${1:-.venv}" && pwd)
shift || true
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export ANSIBLE_CONFIG="$here/ansible.cfg"
export ANSIBLE_COLLECTIONS_PATH="$here/.build/collections"
export PATH="$venv/bin:$PATH"
parts=("$@")
((${#parts[@]})) || parts=(sanity lint docs molecule packaging units)

failed=()
run() {
  local name=$1; shift
  echo "=== $name: $*"
  "$@"
  local rc=$?
  if [ "$name" = units ] && [ $rc -eq 5 ]; then
    echo "=== units: pytest collected no tests: that is a broken suite, not a pass" >&2
  fi
  [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}

for part in "${parts[@]}"; do
  case $part in
    sanity) run sanity hack/sanity.sh "$venv" ;;
    # ansible-lint (offline, so not isolated) keeps its cache of collections and roles in
    # ANSIBLE_HOME: under .build/, not in ~/.ansible, whose collections every later
    # ansible-playbook of this user searches ahead of the checkout.
    lint)   ANSIBLE_HOME="$here/.build/ansible-lint" run lint ansible-lint --offline ;;
    docs)   run docs python hack/module_docs.py check ;;
    # Molecule keeps scenario state (e.g. "prepared") under ~/.ansible/tmp across runs and
    # checkouts: start from none, so every run prepares what it needs.
    molecule) molecule reset --all >/dev/null 2>&1; run molecule molecule test --all ;;
    packaging) run packaging hack/packaging.sh "$venv" ;;
    units)  run units python -m pytest tests/unit tests/integrity tests/controlplane tests/functional ;;
    *) echo "unknown part $part (sanity, lint, docs, molecule, packaging, units)" >&2; exit 2 ;;
  esac
done

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
