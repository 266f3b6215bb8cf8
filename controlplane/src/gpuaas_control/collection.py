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

The playbooks the worker runs must load that same copy: :func:`ansible_finds` says which one
ansible-playbook would load, and the worker refuses to start when the two differ (an older
copy in ``~/.ansible/collections`` would otherwise run old modules under a new control plane).
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
import tempfile
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


def collections_dir() -> Path:
    """The directory that holds ``ansible_collections/gpuaas/slice`` as this process imported it
    (links not followed): what ANSIBLE_COLLECTIONS_PATH names to give Ansible the same copy."""
    return Path(os.path.abspath(contract.__file__)).parents[5]


def _ansible_cfg(project_dir: str) -> str | None:
    """The ansible.cfg that ansible-playbook reads when it runs in ``project_dir`` (ansible-runner
    runs it there): ANSIBLE_CONFIG, the project's own (not in a world-writable directory),
    ~/.ansible.cfg, /etc/ansible/ansible.cfg; None when there is none."""
    candidates = []
    configured = os.environ.get('ANSIBLE_CONFIG')
    if configured is not None:
        configured = os.path.expanduser(configured)
        candidates.append(os.path.join(configured, 'ansible.cfg') if os.path.isdir(configured) else configured)
    try:
        if not os.stat(project_dir).st_mode & stat.S_IWOTH:
            candidates.append(os.path.join(project_dir, 'ansible.cfg'))
    except OSError:
        pass
    candidates += [os.path.expanduser('~/.ansible.cfg'), '/etc/ansible/ansible.cfg']
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def ansible_finds(project_dir: str, playbook: str) -> tuple[str | None, list[str]]:
    """(the gpuaas.slice directory ansible-playbook loads for ``playbook`` run in ``project_dir``,
    or None; the directories searched), in Ansible's order: the playbook's own ``collections``,
    COLLECTIONS_PATHS (ANSIBLE_COLLECTIONS_PATH or the ansible.cfg above), then ``sys.path`` when
    COLLECTIONS_SCAN_SYS_PATH is on (ansible-playbook runs in this Python's environment)."""
    from ansible.config.manager import ConfigManager
    with tempfile.NamedTemporaryFile(suffix='.cfg') as empty:
        # No ansible.cfg reads as an empty one (ConfigManager would otherwise look in our own cwd).
        manager = ConfigManager(conf_file=_ansible_cfg(project_dir) or empty.name)
        # Its default is a template on ANSIBLE_HOME, rendered as ansible.constants renders it.
        paths = manager.get_config_value('COLLECTIONS_PATHS',
                                         variables={'ANSIBLE_HOME': manager.get_config_value('ANSIBLE_HOME')}) or ()
        scan_sys_path = manager.get_config_value('COLLECTIONS_SCAN_SYS_PATH')
    searched = [os.path.join(os.path.dirname(os.path.join(project_dir, playbook)), 'collections')]
    searched += [os.path.expanduser(path) for path in paths]
    if scan_sys_path:
        searched += [path for path in sys.path if path]
    for path in searched:
        candidate = os.path.join(path, 'ansible_collections', 'gpuaas', 'slice')
        if os.path.isdir(candidate):
            return os.path.realpath(candidate), searched
    return None, searched
