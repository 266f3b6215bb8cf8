# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuaas.slice.phase_timings: per-phase durations from a playbook's time marks."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def phase_timings(marks, digits=3):
    """{start: t0, lease: t1, image: t2} -> {lease: t1 - t0, image: t2 - t1, total: t2 - t0}.

    Marks are epoch seconds taken when each phase ended, in the order the phases ran; the
    first is the start. A phase's time is the time since the mark before it.
    """
    if not isinstance(marks, dict) or len(marks) < 1:
        raise AnsibleFilterError('phase_timings expects a dict of time marks, got %r' % (marks,))
    try:
        items = [(str(name), float(value)) for name, value in marks.items()]
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError('phase_timings: a time mark is not a number: %s' % exc)
    result = {}
    for (_before, earlier), (name, later) in zip(items, items[1:]):
        result[name] = round(later - earlier, digits)
    result['total'] = round(items[-1][1] - items[0][1], digits)
    return result


class FilterModule(object):
    def filters(self):
        return {'phase_timings': phase_timings}
