# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's own rules, imported rather than copied.

The slot layout (ids, MAC, IP) and the approved-slot-map rules live in the collection's
``plugins/module_utils/_layout.py`` and ``_approval.py``; both are plain Python without
Ansible imports. They are loaded from the collection checkout this package sits in (or
``GPUAAS_COLLECTION_ROOT``), else from an installed ``gpuaas.slice`` collection.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

_MODULE_UTILS = ('plugins', 'module_utils')


class CollectionMissing(ImportError):
    """Neither a checkout nor an installed gpuaas.slice collection was found."""


def _is_collection(path: Path) -> bool:
    galaxy = path / 'galaxy.yml'
    if not galaxy.is_file() or not path.joinpath(*_MODULE_UTILS, '_approval.py').is_file():
        return False
    text = galaxy.read_text(encoding='utf-8')
    return 'namespace: gpuaas' in text and 'name: slice' in text


def collection_root() -> Path | None:
    """The gpuaas.slice checkout: GPUAAS_COLLECTION_ROOT, else the one holding this package."""
    configured = os.environ.get('GPUAAS_COLLECTION_ROOT')
    if configured:
        path = Path(configured).resolve()
        if not _is_collection(path):
            raise CollectionMissing('GPUAAS_COLLECTION_ROOT=%s is not a gpuaas.slice collection '
                                    '(no galaxy.yml naming gpuaas.slice, or no %s)'
                                    % (configured, '/'.join(_MODULE_UTILS) + '/_approval.py'))
        return path
    for parent in Path(__file__).resolve().parents:
        if _is_collection(parent):
            return parent
    return None


def _load(name: str):
    qualified = 'gpuaas_control._collection.' + name
    if qualified in sys.modules:
        return sys.modules[qualified]
    root = collection_root()
    if root is not None:
        spec = importlib.util.spec_from_file_location(
            qualified, root.joinpath(*_MODULE_UTILS, name + '.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module('ansible_collections.gpuaas.slice.plugins.module_utils.' + name)
    except ImportError as exc:
        raise CollectionMissing(
            'the gpuaas.slice collection is needed for its %s rules: run from the checkout, '
            'set GPUAAS_COLLECTION_ROOT, or install the collection' % name) from exc


layout = _load('_layout')
approval = _load('_approval')
