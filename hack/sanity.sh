#!/usr/bin/env bash
# Run `ansible-test sanity` on the collection. ansible-test insists on running from
# .../ansible_collections/gpuaas/slice, so copy what git tracks (and what is new but not
# ignored) there, leaving out what galaxy.yml's build_ignore leaves out of the artefact, except
# the test suite, the molecule scenarios, the changelog fragments and the repository's own
# ansible files, which the artefact leaves out because they need the checkout, and sanity checks.
set -euo pipefail
venv=$(cd "${1:-.venv}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/.build/sanity/ansible_collections/gpuaas/slice"

rm -rf "$dest"
mkdir -p "$dest"
cd "$here"
ignored=$("$venv/bin/python" -c 'import yaml
checked = {"tests", "molecule", "changelogs/fragments", "ansible.cfg", "collections"}
print("\n".join(p for p in yaml.safe_load(open("galaxy.yml"))["build_ignore"] if p not in checked))')
git ls-files -z --cached --others --exclude-standard \
  | "$venv/bin/python" -c '
import fnmatch, os, sys
ignored = sys.argv[1].split("\n")
for path in sys.stdin.read().split("\0"):
    if not path or not os.path.exists(path):
        continue
    top = path.split("/", 1)[0]
    if any(fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(top, pat) for pat in ignored):
        continue
    print(path)
' "$ignored" | rsync -a --files-from=- ./ "$dest/"

# ansible-test bootstraps pip into its sanity virtualenvs with a script from a host other than
# the package index; give it an equivalent that uses ensurepip + the index.
pip_version=$("$venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g; print(g(type("P", (), {"version": "3.12"})())["pip"])')
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if ! cmp -s "$here/hack/ansible_test_get_pip.py" "$cache"; then
  mkdir -p "$(dirname "$cache")" && cp "$here/hack/ansible_test_get_pip.py" "$cache"
fi

cd "$dest"
# A git repository makes ansible-test list exactly these files.
git init -q . && git add -A >/dev/null
# --venv: each sanity test gets the requirements ansible-test pins for it, apart from ours.
exec "$venv/bin/ansible-test" sanity --python 3.12 --color no "${@:2}"
