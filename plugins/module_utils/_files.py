# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: path checks and atomic file writes shared by the modules.

Every path a module is given is checked here before it is used: absolute, free of
control characters and of ``..`` components, and (where the caller names allowed
directories) inside one of them after symlinks are resolved. Files are written to a
temporary file in the destination directory and moved into place with
``module.atomic_move``, so a reader sees the old content or the new, never half.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import tempfile

from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ContractError, GpuaasError, has_control_chars, show)


class PathError(ContractError):
    """A path the collection refuses to use; the message says which and why."""


class StateFileError(GpuaasError):
    """A state file that cannot be read back (damaged JSON, wrong shape, unreadable); names the file."""


def check_path(path, what, allowed_dirs=None):
    """The normalised absolute ``path``, or PathError naming ``what`` it was for.

    With ``allowed_dirs``, the path with every symlink resolved must lie inside one of
    them (also resolved), so a link planted in an allowed directory cannot point out.
    """
    if not isinstance(path, str) or not path:
        raise PathError('%s must be a non-empty path' % what)
    if has_control_chars(path):
        raise PathError('%s %s contains control characters' % (what, show(path, 4096)))
    if not path.startswith('/'):
        raise PathError('%s %s must be an absolute path' % (what, show(path, 4096)))
    if '..' in path.split('/'):
        raise PathError("%s %s contains a '..' component: give the path without it" % (what, show(path, 4096)))
    normal = os.path.normpath(path)
    if allowed_dirs:
        real = os.path.realpath(normal)
        for allowed in allowed_dirs:
            base = os.path.realpath(allowed)
            if real == base or real.startswith(base.rstrip('/') + '/'):
                return normal
        raise PathError('%s %s is outside the allowed directories (%s)%s'
                        % (what, show(path, 4096), ', '.join(show(d, 4096) for d in allowed_dirs),
                           '' if real == normal else '; it resolves to %s' % show(real, 4096)))
    return normal


def check_dir(path, what, allowed_dirs=None):
    """:func:`check_path` for a directory: one that exists must be a directory (or a link to one)."""
    normal = check_path(path, what, allowed_dirs)
    if os.path.lexists(normal) and not os.path.isdir(normal):
        raise PathError('%s %s is not a directory' % (what, show(path, 4096)))
    return normal


def check_file(path, what, allowed_dirs=None):
    """:func:`check_path` for a file: one that exists must not be a directory."""
    normal = check_path(path, what, allowed_dirs)
    if os.path.isdir(normal):
        raise PathError('%s %s is a directory, not a file' % (what, show(path, 4096)))
    return normal


def read_json(path, what, kind=dict):
    """The JSON value of ``path`` (a ``kind``), None when there is no file, else StateFileError.

    A file that is not JSON, holds another type or cannot be read is reported naming the
    file, so a caller never mistakes a damaged record for a missing one.
    """
    try:
        with open(path, 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise StateFileError('%s %s cannot be read: %s' % (what, show(path, 4096), exc.strerror or exc))
    try:
        value = json.loads(raw.decode('utf-8'))
    except ValueError as exc:
        raise StateFileError('%s %s is not valid JSON (%s)' % (what, show(path, 4096), exc))
    except RecursionError:
        raise StateFileError('%s %s is not valid JSON (nested too deep)' % (what, show(path, 4096)))
    if not isinstance(value, kind):
        raise StateFileError('%s %s holds %s, not a %s' % (what, show(path, 4096), type(value).__name__, kind.__name__))
    return value


def ensure_dir(path, mode):
    """Create ``path`` (and missing parents) with ``mode``; a no-op when it exists."""
    if not os.path.isdir(path):
        try:
            os.makedirs(path, mode)
        except OSError:
            # Another process (a racing allocate) made it first: that is fine.
            if not os.path.isdir(path):
                raise
            return
        os.chmod(path, mode)


def atomic_write(module, path, data, mode=0o600):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same directory."""
    directory = os.path.dirname(path)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path))
    try:
        with os.fdopen(handle, 'wb') as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
    except (IOError, OSError):
        os.unlink(tmp)
        raise
    install(module, tmp, path, mode)


def install(module, tmp, path, mode):
    """Move a finished temporary file over ``path`` atomically and give it ``mode``."""
    module.atomic_move(tmp, path)
    # atomic_move gives a new file the umask's permissions: put ours back.
    os.chmod(path, mode)


def remove(path):
    """Remove a file; True when there was one."""
    try:
        os.unlink(path)
    except OSError:
        if os.path.lexists(path):
            raise
        return False
    return True
