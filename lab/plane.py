# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane as an operator runs it: ``gpuaas serve`` and ``gpuaas worker`` as their
own processes on a SQLite database of their own, and the ``gpuaas`` command beside them.
The lab's control-plane test and the fleet lab's control-plane part drive it through this.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


class Failed(Exception):
    """A ``gpuaas`` command or the API did not do what was asked."""


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Plane:
    """``gpuaas serve`` and ``gpuaas worker`` under ``work`` (database, runs, logs); ``env``
    adds to or overrides the control plane's settings (GPUAAS_*)."""

    def __init__(self, work, inventory, env):
        self.work = str(work)
        self.url = 'http://127.0.0.1:%d' % free_port()
        self.env = dict(os.environ, GPUAAS_DB_URL='sqlite:///%s' % os.path.join(self.work, 'gpuaas.db'),
                        GPUAAS_API=self.url, GPUAAS_PROJECT_DIR=REPO, GPUAAS_INVENTORY=inventory,
                        GPUAAS_RUNS_DIR=os.path.join(self.work, 'runs'),
                        PATH=BIN + os.pathsep + os.environ.get('PATH', ''), PYTHONUNBUFFERED='1',
                        # The working tree's collection, as the playbooks run it elsewhere: ansible.cfg's
                        # own list would take an installed copy in ~/.ansible/collections first.
                        ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'), **env)
        self.env.pop('GPUAAS_TOKEN', None)
        self.procs = []

    def gpuaas(self, *args, token=None, check=True, timeout=900):
        """Run ``gpuaas ARGS`` (as ``token``'s holder); its CompletedProcess. Fails on a
        non-zero exit unless ``check`` is false."""
        env = dict(self.env, GPUAAS_TOKEN=token) if token else self.env
        done = subprocess.run([os.path.join(BIN, 'gpuaas'), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if check and done.returncode != 0:
            raise Failed('gpuaas %s: rc %d\n%s\n%s' % (' '.join(args), done.returncode, done.stdout[-3000:],
                                                       done.stderr[-3000:]))
        return done

    def token(self, role, tenant=None):
        """A new API token for ``role`` (and ``tenant``)."""
        args = ('token', 'create', '--role', role) + (('--tenant', tenant) if tenant else ())
        return self.gpuaas(*args).stdout.strip()

    def start(self, name, *args):
        """``gpuaas ARGS`` in the background, its output in ``work/NAME.log``."""
        with open(os.path.join(self.work, name + '.log'), 'w') as log:
            proc = subprocess.Popen([os.path.join(BIN, 'gpuaas'), *args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name):
        with open(os.path.join(self.work, name + '.log')) as handle:
            return handle.read()

    def up(self):
        """The API (once it answers /healthz), then the worker."""
        self.start('serve', 'serve', '--port', self.url.rsplit(':', 1)[1], '--no-access-log')
        self.wait_healthy()
        self.start('worker', 'worker')

    def http(self, method, path, token, body=None):
        """(status, the decoded JSON body or the text) of one API request."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            'Authorization': 'Bearer %s' % token, 'Content-Type': 'application/json'})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status, kind = response.read().decode(), response.status, response.headers.get_content_type()
        except urllib.error.HTTPError as error:
            raw, status, kind = error.read().decode(), error.code, error.headers.get_content_type()
        return status, json.loads(raw) if kind == 'application/json' else raw

    def wait_healthy(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + '/healthz', timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise Failed('the API did not come up:\n%s' % self.log('serve')[-3000:])

    def stop(self):
        """SIGTERM to each process group, then SIGKILL to what is still there after 120 s."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
