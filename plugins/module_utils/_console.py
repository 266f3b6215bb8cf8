# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the newest part of allocated slots' serial console logs, behind
gpuaas.slice.slot_console_info.

libvirt logs each slot's serial console to ``{console_log_dir}/{slot_id}.log`` (rewritten at
each start of the VM). A slot's log is read for the allocation its lease names only, and only
when the log was written since that lease was taken (a slot's log from its previous tenant
stays until the next VM start). The file name comes from the slot id alone; it is opened
relative to the directory without following a symlink and must be a regular file, so nothing
outside the directory (and no other slot's log) is ever read. At most ``max_bytes`` of the
end of the file are read.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import calendar
import errno
import os
import stat
import time

from ansible_collections.gpuaas.slice.plugins.module_utils._lease import LeaseError, lease_path, read_lease
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import (
    ALLOCATION_ID, ContractError, GpuaasError, Slot, check_int, show)

MAX_BYTES = 64 * 1024
MAX_SLOTS = 1024

ARGUMENT_SPEC = dict(
    slots=dict(type='list', elements='dict', required=True, options=dict(
        slot_id=dict(type='str', required=True), allocation_id=dict(type='str', required=True))),
    console_log_dir=dict(type='path', default='/var/log/gpuaas/console'),
    lease_dir=dict(type='path', default='/var/lib/gpuaas/node-scheduler/leases'),
    max_bytes=dict(type='int', default=MAX_BYTES),
)


class ConsoleError(GpuaasError):
    """The request cannot be read at all (a bad option); one slot's problem is its entry's error."""


def _epoch(iso):
    try:
        return calendar.timegm(time.strptime(iso, '%Y-%m-%dT%H:%M:%SZ'))
    except (TypeError, ValueError):
        return None


def read_tail(dir_fd, name, max_bytes):
    """(size, offset, bytes, mtime) of the last ``max_bytes`` of ``name`` in the directory
    ``dir_fd``; None when it does not exist. A symlink or anything but a regular file is an error."""
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        if exc.errno == errno.ELOOP:
            raise ConsoleError('%s is a symlink: not followed' % name)
        raise
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise ConsoleError('%s is not a regular file' % name)
        offset = max(0, info.st_size - max_bytes)
        os.lseek(handle, offset, os.SEEK_SET)
        chunks, left = [], info.st_size - offset
        while left > 0:
            chunk = os.read(handle, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return info.st_size, offset, b''.join(chunks), info.st_mtime
    finally:
        os.close(handle)


def text_of(data, offset):
    """The bytes as text; a tail that starts inside a line drops that partial line."""
    if offset and b'\n' in data:
        data = data[data.index(b'\n') + 1:]
    return data.decode('utf-8', 'replace').replace('\r\n', '\n').replace('\x00', '')


def read_one(dir_fd, lease_dir, slot_id, allocation_id, max_bytes):
    """The entry of one slot: its console's tail, or ``missing``, or ``error``."""
    slot = Slot.parse(slot_id)
    ALLOCATION_ID.check(allocation_id, 'allocation_id')
    try:
        lease = read_lease(lease_path(lease_dir, slot.slot_id))
    except LeaseError as exc:
        return {'error': str(exc)}
    if lease is None or lease['allocation_id'] != allocation_id:
        return {'error': 'slot %s is not held by allocation %s: its console is not read'
                         % (slot.slot_id, allocation_id)}
    tail = read_tail(dir_fd, slot.slot_id + '.log', max_bytes)
    if tail is None:
        return {'missing': True}
    size, offset, data, mtime = tail
    taken = _epoch(lease.get('created_at'))
    if taken is None or mtime < taken:
        # Written before this allocation took the slot: its previous tenant's, until the VM starts.
        return {'missing': True}
    return {'allocation_id': allocation_id, 'size': size, 'offset': offset, 'truncated': offset > 0,
            'modified_at': round(mtime, 3), 'text': text_of(data, offset)}


def engine(module):
    """slot_console_info: {console: {slot_id: entry}} for the slots asked."""
    p = module.params
    check_int(p['max_bytes'], 'max_bytes', 1, MAX_BYTES)
    if len(p['slots']) > MAX_SLOTS:
        raise ConsoleError('slots lists %d slots, more than %d' % (len(p['slots']), MAX_SLOTS))
    for item in p['slots']:
        Slot.parse(item['slot_id'])
        ALLOCATION_ID.check(item['allocation_id'], 'allocation_id')
    console = {}
    try:
        dir_fd = os.open(p['console_log_dir'], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise ConsoleError('console_log_dir %s cannot be opened: %s' % (show(p['console_log_dir']), exc))
        dir_fd = None
    try:
        for item in p['slots']:
            if dir_fd is None:
                console[item['slot_id']] = {'missing': True}
                continue
            try:
                console[item['slot_id']] = read_one(dir_fd, p['lease_dir'], item['slot_id'], item['allocation_id'],
                                                    p['max_bytes'])
            except (ConsoleError, ContractError) as exc:
                console[item['slot_id']] = {'error': str(exc)}
            except (IOError, OSError) as exc:
                console[item['slot_id']] = {'error': 'reading the console log of %s: %s' % (item['slot_id'], exc)}
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return {'changed': False, 'console': console, 'console_log_dir': p['console_log_dir']}
