# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record a directory tree exactly (every path, file content, link target) to prove nothing changed."""

from __future__ import annotations

import os


def snapshot(*roots):
    """``{(root, relative path): entry}`` for every directory, file and link under ``roots``.

    An entry is ``('dir',)``, ``('link', target)`` or ``('file', bytes)``. A root that
    does not exist is recorded as absent, so creating it counts as a change too.
    """
    state = {}
    for root in roots:
        root = os.fspath(root)
        if not os.path.lexists(root):
            state[(root, '.')] = ('absent',)
            continue
        for directory, dirs, files in os.walk(root):
            rel_dir = os.path.relpath(directory, root)
            state[(root, rel_dir)] = ('dir',)
            for name in sorted(dirs + files):
                path = os.path.join(directory, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if os.path.islink(path):
                    state[(root, rel)] = ('link', os.readlink(path))
                elif os.path.isfile(path):
                    with open(path, 'rb') as handle:
                        state[(root, rel)] = ('file', handle.read())
            # os.walk does not descend into symlinked directories; they are links above.
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
    return state


def changes(before, after):
    """Human-readable differences between two snapshots (empty when identical)."""
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append('%s/%s: %r -> %r' % (key[0], key[1], _short(before.get(key)),
                                              _short(after.get(key))))
    return lines


def _short(entry):
    if entry and entry[0] == 'file' and len(entry[1]) > 60:
        return ('file', entry[1][:60] + b'...')
    return entry
