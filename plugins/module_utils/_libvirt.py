# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to gpuaas.slice: the one libvirt connection helper of the collection.

Every module that talks to libvirt imports the binding, the ``uri`` option and the
connection from here; none writes its own (community.libvirt has four copies of its
connection class, each with its own bugs). libvirt-python is optional for the
collection as a whole: without it this file still imports, ``HAS_LIBVIRT`` is False
and :func:`require_libvirt` fails the module with ``missing_required_lib``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import missing_required_lib
from ansible_collections.gpuaas.slice.plugins.module_utils.contract import GpuaasError

try:
    import libvirt
except ImportError:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None

DEFAULT_URI = 'qemu:///system'
LIBVIRT_ARGS = dict(uri=dict(type='str', default=DEFAULT_URI))


class LibvirtError(GpuaasError):
    """A libvirt call failed; the message says which call, on what, and libvirt's reason."""


def require_libvirt(module):
    """Fail the module with the standard message when libvirt-python is missing."""
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib('libvirt-python'), exception=LIBVIRT_IMPORT_ERROR)


def _quiet(_ctx, _error):
    """libvirt prints every error to stderr by default; the modules report them instead."""


_LOOP = {}
EVENT_TICK_MS = 100


def _event_loop():
    """libvirt's default event loop, registered once per process before a connection that wants
    events is opened; a timer makes each :meth:`Connection.pump` return within EVENT_TICK_MS."""
    if not _LOOP:
        libvirt.virEventRegisterDefaultImpl()
        _LOOP['timer'] = libvirt.virEventAddTimeout(EVENT_TICK_MS, lambda _timer, _opaque: None, None)


class Connection:
    """An open connection to ``uri``; use it as a context manager.

    Methods wrap the libvirt calls the collection makes and turn ``libvirtError`` into
    :class:`LibvirtError` with the domain name in the message.
    """

    def __init__(self, uri=DEFAULT_URI, events=False):
        self.uri = uri
        self.conn = None
        self.events = events

    def __enter__(self):
        libvirt.registerErrorHandler(_quiet, None)
        if self.events:
            _event_loop()
        try:
            self.conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise LibvirtError('cannot connect to libvirt at %s: %s (is libvirtd running, and '
                               'may this user use that URI?)' % (self.uri, exc))
        return self

    def __exit__(self, *exc_info):
        if self.conn is not None:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None
        return False

    def call(self, what, func, *args):
        """``func(*args)``, with a libvirt failure reported as 'what: reason'."""
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise LibvirtError('%s failed: %s' % (what, exc))

    def lookup(self, name):
        """The domain called ``name``, or None when libvirt has none."""
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise LibvirtError('looking up domain %s failed: %s' % (name, exc))

    def define(self, xml):
        return self.call('defining the domain', self.conn.defineXML, xml)

    def inactive_xml(self, domain):
        return self.call('reading the XML of %s' % domain.name(), domain.XMLDesc,
                         libvirt.VIR_DOMAIN_XML_INACTIVE)

    def is_active(self, domain):
        return bool(self.call('reading the state of %s' % domain.name(), domain.isActive))

    def undefine(self, domain):
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                 | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        return self.call('undefining %s' % domain.name(), domain.undefineFlags, flags)

    def on_reboot(self, domain, callback):
        """Call ``callback()`` at each reset of ``domain`` (a guest reboot, or libvirt's reset
        after an ACPI reboot); needs ``events=True``. Returns the registration's id."""
        return self.call('watching %s for reboots' % domain.name(), self.conn.domainEventRegisterAny,
                         domain, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, lambda _c, _d, _o: callback(), None)

    def pump(self):
        """Deliver pending events (returns within EVENT_TICK_MS)."""
        if libvirt.virEventRunDefaultImpl() < 0:
            raise LibvirtError('running the libvirt event loop failed')

    def reboot(self, domain):
        """Ask for an ACPI reboot: the power button, then libvirt resets the guest instead of
        letting it power off."""
        return self.call('rebooting %s' % domain.name(), domain.reboot, libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
