#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: host_daemon
short_description: Run a node daemon on a host without systemd
version_added: 0.1.0
description:
  - Keeps one daemon (dnsmasq, the telemetry sink, Open vSwitch's daemons, libvirtd) running or
    stopped on a host whose PID 1 is not systemd (a container, a CI machine, the local lab).
    Real hosts run the same daemons as the systemd units the C(gpuaas.slice.host_prep) role
    installs; that role picks this module only where systemd does not run.
  - The daemon is known by its pidfile. A pidfile whose pid is gone, is a zombie, or runs another
    program is stale and does not count as running.
  - A daemon that runs with a different command line than O(argv) (the module started it with
    another) is restarted, so a changed configuration option takes effect and a second run reports no
    change.
  - The module signals only the daemon it manages. A pid counts as the daemon only while
    C(/proc/<pid>/cmdline) is O(argv) or the command line the module started it with (recorded in
    C({pidfile}.argv)), checked again before every signal. A pidfile that names any other process
    (even the same program with other arguments) does not count; that process is left alone and the
    module warns.
  - A pidfile written after its process started (so written for it) that names a process the module
    cannot recognise (a daemon an older version started, which recorded no command line, run since with
    another O(argv)) fails the task, in check mode too. Stopping it could kill another process and
    starting the daemon could leave two; the message names the pid and its command line. Run the task
    once with O(argv) set to that command line (the module records it, reporting a change, and manages the
    daemon from then on), stop the process yourself, or remove the pidfile if it is not the daemon. A
    pidfile older than its process (the pid was reused) is stale.
  - O(pidfile) must lie inside O(run_dir) and O(log_file) inside O(log_dir), with symlinks resolved;
    the module never writes or removes a pidfile anywhere else.
author:
  - gpuaas.slice contributors (@gpuaas)
extends_documentation_fragment:
  - gpuaas.slice.attributes
attributes:
  check_mode:
    support: full
    details: Says whether it would start, restart or stop the daemon; touches nothing.
  diff_mode:
    support: full
    details: Before and after, whether the daemon runs and with which command line.
  idempotent:
    support: full
options:
  name:
    description: The daemon's name, for messages (1-64 letters, digits, C(.), C(_), C(@), C(-)).
    type: str
    required: true
  state:
    description: Whether the daemon runs.
    type: str
    choices: [started, stopped]
    default: started
  argv:
    description:
      - The daemon's command line; the first item an absolute path. Required with O(state=started).
      - With O(state=stopped), the daemon is recognised by this command line or the one it was started with.
      - Run as given, without a shell, so no item is ever interpreted.
    type: list
    elements: str
  pidfile:
    description: The daemon's pidfile, inside O(run_dir).
    type: path
    required: true
  run_dir:
    description: The directory of the daemons' pidfiles; O(pidfile) must lie inside it.
    type: path
    default: /run/gpuaas
  forks:
    description:
      - V(true) when the program daemonises itself and writes O(pidfile) (for example
        C(dnsmasq --pid-file=...), C(ovsdb-server --detach --pidfile=...)).
      - V(false) when it stays in the foreground; the module then detaches it into a session of its
        own and writes O(pidfile) itself.
    type: bool
    default: false
  log_file:
    description:
      - Where the daemon's standard output and error go (appended), inside O(log_dir). Unset, they are
        discarded.
    type: path
  log_dir:
    description: The directory O(log_file) must lie in.
    type: path
    default: /var/log/gpuaas
  ready_path:
    description: A socket or file the daemon creates once it serves; the module waits for it.
    type: path
  restart:
    description:
      - With O(state=started), restart a running daemon even when its command line is the same (its
        configuration file changed, for example).
    type: bool
    default: false
  timeout:
    description: Seconds to wait for the daemon to start (or stop before it is killed), a finite number from 0.001 to 3600.
    type: float
    default: 15
seealso:
  - module: gpuaas.slice.host_network
'''

EXAMPLES = r'''
- name: Run the telemetry sink where systemd does not run
  gpuaas.slice.host_daemon:
    name: gpuaas-telemetry-sink
    argv: [/usr/bin/python3, /usr/local/lib/gpuaas/gpuaas_telemetry_sink.py, --listen, 10.100.0.1:9110]
    pidfile: /run/gpuaas/telemetry-sink.pid
    log_file: /var/log/gpuaas/telemetry-sink.log

- name: Stop it
  gpuaas.slice.host_daemon:
    name: gpuaas-telemetry-sink
    pidfile: /run/gpuaas/telemetry-sink.pid
    state: stopped
'''

RETURN = r'''
name:
  description: The daemon's name.
  type: str
  returned: always
  sample: gpuaas-telemetry-sink
pid:
  description: The daemon's pid, null when it does not run (or in check mode, before it would start).
  type: int
  returned: always
  sample: 4242
running:
  description: Whether the daemon runs now (would run, in check mode).
  type: bool
  returned: always
  sample: true
pidfile:
  description: The pidfile.
  type: str
  returned: always
  sample: /run/gpuaas/telemetry-sink.pid
actions:
  description: What the module did (or would do in check mode).
  type: list
  elements: str
  returned: always
  sample: ["start /usr/bin/python3 /usr/local/lib/gpuaas/gpuaas_telemetry_sink.py"]
'''

from ansible_collections.gpuaas.slice.plugins.module_utils._daemon import Daemon
from ansible_collections.gpuaas.slice.plugins.module_utils._engine import run_module

ARGUMENT_SPEC = dict(
    name=dict(type='str', required=True),
    state=dict(type='str', choices=['started', 'stopped'], default='started'),
    argv=dict(type='list', elements='str'),
    pidfile=dict(type='path', required=True),
    run_dir=dict(type='path', default='/run/gpuaas'),
    forks=dict(type='bool', default=False),
    log_file=dict(type='path'),
    log_dir=dict(type='path', default='/var/log/gpuaas'),
    ready_path=dict(type='path'),
    timeout=dict(type='float', default=15),
    restart=dict(type='bool', default=False),
)


def main():
    run_module(ARGUMENT_SPEC, lambda module: Daemon(module).run(), required_if=[('state', 'started', ['argv'])])


if __name__ == '__main__':
    main()
