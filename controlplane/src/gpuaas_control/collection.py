# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpuaas.slice collection, imported as a package: the control plane depends on it.

The rules both sides keep (identifiers, SSH keys, sizes, the slot identity) live in the
collection's ``plugins/module_utils/contract.py``, the approved-slot-map rules in
``_approval.py``; both are plain Python. They are imported as
``ansible_collections.gpuaas.slice...`` from ``sys.path`` (the project's virtualenv has a
``.pth`` for the checkout, see hack/setup.sh) or, failing that, from the collection paths
Ansible itself searches (``ANSIBLE_COLLECTIONS_PATH``, ``~/.ansible/collections``,
``/usr/share/ansible/collections``), where ``ansible-galaxy collection install`` puts it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

PACKAGE = 'ansible_collections.gpuaas.slice'
DEFAULT_PATHS = ('~/.ansible/collections', '/usr/share/ansible/collections')


class CollectionMissing(ImportError):
    """The gpuaas.slice collection is not installed where Python or Ansible looks."""


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    configured = os.environ.get('ANSIBLE_COLLECTIONS_PATH') or os.environ.get('ANSIBLE_COLLECTIONS_PATHS') or ''
    for entry in [p for p in configured.split(os.pathsep) if p] + list(DEFAULT_PATHS):
        path = os.path.expanduser(entry)
        if os.path.isdir(os.path.join(path, 'ansible_collections', 'gpuaas', 'slice')) and path not in sys.path:
            sys.path.append(path)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CollectionMissing(
            'the gpuaas.slice collection is needed (%s): install it with ansible-galaxy or put '
            'its collections directory on ANSIBLE_COLLECTIONS_PATH' % exc) from exc


contract = _import(PACKAGE + '.plugins.module_utils.contract')
approval = _import(PACKAGE + '.plugins.module_utils._approval')


def collection_root() -> Path:
    """The collection's directory (its playbooks are the worker's default project)."""
    return Path(contract.__file__).resolve().parents[2]
