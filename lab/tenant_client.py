# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's tenant: a client outside the node that logs into the real guest over SSH.

The client is a network namespace (CLIENT_NS) joined to this machine by a veth pair: the
node's side holds the lab's public address (PUBLIC_ADDRESS, ``gpuaas_ssh_public_address`` in
lab/inventory.yml), the client's side CLIENT_ADDRESS. A tenant reaches slot i on
``access.ssh_host:access.ssh_port`` (the allocation's ``access``), which nftables forwards to
that slot's port 22 only. Everything the lab proves of a real guest it proves from there,
with the allocation's key: which guest the port lands in (hostname, instance id), that it
booted under UEFI, that cloud-init is done without errors, and (isolation) which addresses
the guest reaches on the slot network.
"""

import json
import shlex
import subprocess
import time

CLIENT_NS = 'gpuaas-lab-client'
NODE_LINK, CLIENT_LINK = 'glab-public', 'glab-client'
PUBLIC_ADDRESS, CLIENT_ADDRESS, PREFIX = '198.51.100.1', '198.51.100.2', 24
SSH_OPTIONS = ['-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
               '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=30', '-o', 'IdentitiesOnly=yes']
# What the lab reads in a guest, one 'key=value' a line: its identity, firmware, address bits,
# its largest assigned 64-bit BAR (as tests/guest/init reads them), its address and cloud-init.
FACTS = r'''
echo "hostname=$(hostname)"
echo "instance_id=$(cat /var/lib/cloud/data/instance-id 2>/dev/null)"
[ -d /sys/firmware/efi ] && echo firmware=uefi || echo firmware=bios
echo "phys_bits=$(sed -n 's/^address sizes[^0-9]*\([0-9]*\) bits physical.*/\1/p' /proc/cpuinfo | head -n 1)"
max=0; where=""
for dev in /sys/bus/pci/devices/*; do
  bar=0
  while read -r start end flags && [ $bar -le 5 ]; do
    if [ $((flags & 0x100200)) -eq $((0x100200)) ] && [ $((start)) -ne 0 ] && [ $((end)) -gt $((start)) ]; then
      size=$(( (end - start + 1) >> 20 ))
      if [ $size -gt $max ]; then max=$size; where="${dev##*/} bar$bar $start"; fi
    fi
    bar=$((bar + 1))
  done < "$dev/resource"
done
echo "bar_max_mib=$max"
echo "bar_max=$where"
echo "ip=$(ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}')"
echo "agent=$(systemctl is-active gpuaas-guest-agent.service)"
echo "cloud_init=$(cloud-init status 2>/dev/null | sed -n 's/^status: //p')"
echo "cloud_init_result=$(tr -d '\n' < /run/cloud-init/result.json 2>/dev/null)"
'''


def _ip(*args, check=True):
    return subprocess.run(['ip'] + list(args), check=check, capture_output=True, text=True)


def client_up():
    """The client namespace and its veth to this machine (idempotent)."""
    if CLIENT_NS not in _ip('netns', 'list').stdout.split():
        _ip('netns', 'add', CLIENT_NS)
    if _ip('link', 'show', NODE_LINK, check=False).returncode != 0:
        _ip('link', 'add', NODE_LINK, 'type', 'veth', 'peer', 'name', CLIENT_LINK, 'netns', CLIENT_NS)
    _ip('addr', 'replace', '%s/%d' % (PUBLIC_ADDRESS, PREFIX), 'dev', NODE_LINK)
    _ip('link', 'set', NODE_LINK, 'up')
    _ip('-n', CLIENT_NS, 'addr', 'replace', '%s/%d' % (CLIENT_ADDRESS, PREFIX), 'dev', CLIENT_LINK)
    _ip('-n', CLIENT_NS, 'link', 'set', CLIENT_LINK, 'up')
    _ip('-n', CLIENT_NS, 'link', 'set', 'lo', 'up')


def client_down():
    _ip('link', 'del', NODE_LINK, check=False)
    _ip('netns', 'del', CLIENT_NS, check=False)


def ssh_argv(access, key, command=None):
    """What the tenant types (in the client namespace) to log into the allocation."""
    argv = ['ssh', '-i', key, '-p', str(access['ssh_port']), '%s@%s' % (access['user'], access['ssh_host'])]
    return argv + ([command] if command else [])


def tenant_command(access, key):
    return 'ip netns exec %s %s' % (CLIENT_NS, ' '.join(shlex.quote(a) for a in ssh_argv(access, key)))


def ssh(access, key, command, timeout=60):
    """Run ``command`` in the guest from the client namespace: (rc, stdout, stderr)."""
    argv = ['ip', 'netns', 'exec', CLIENT_NS, 'ssh'] + SSH_OPTIONS + ssh_argv(access, key, command)[1:]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, '', 'ssh timed out after %d s' % timeout
    return done.returncode, done.stdout, done.stderr


def parse_facts(text):
    """FACTS' output as a dict (cloud_init_result parsed as JSON where it is)."""
    facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition('=')
        if sep:
            facts[key.strip()] = value.strip()
    for key in ('phys_bits', 'bar_max_mib'):
        if facts.get(key, '').isdigit():
            facts[key] = int(facts[key])
    try:
        facts['cloud_init_result'] = json.loads(facts.get('cloud_init_result') or 'null')
    except ValueError:
        pass
    return facts


def cloud_init_errors(facts):
    """cloud-init's errors as its result.json lists them ([] when done cleanly)."""
    result = facts.get('cloud_init_result')
    if not isinstance(result, dict):
        return ['no /run/cloud-init/result.json']
    return list((result.get('v1') or {}).get('errors') or [])


def guest_facts(access, key, timeout=600):
    """Wait until the guest answers SSH (the tenant's login works), then until cloud-init has
    finished; what FACTS read then: {'ssh_seconds', 'seconds' (cloud-init done), ...facts},
    or {'error': why} at the timeout."""
    start = time.monotonic()
    deadline = start + timeout
    last = ['nothing tried']
    while time.monotonic() < deadline:
        rc, out, err = ssh(access, key, 'true', timeout=max(10, deadline - time.monotonic()))
        if rc == 0:
            break
        last = (err or out).strip().splitlines()[-1:] or ['ssh exited %s' % rc]
        time.sleep(3)
    else:
        return {'error': 'no login over SSH within %d s (%s)' % (timeout, last[0])}
    ssh_seconds = round(time.monotonic() - start, 1)
    rc, out, err = ssh(access, key, 'cloud-init status --wait >/dev/null 2>&1; ' + FACTS,
                       timeout=max(30, deadline - time.monotonic()))
    if rc != 0:
        return {'error': 'logged in after %s s, then reading the guest failed (ssh exited %s: %s)'
                % (ssh_seconds, rc, (err or out).strip()[:200])}
    facts = parse_facts(out)
    facts.update(ssh_seconds=ssh_seconds, seconds=round(time.monotonic() - start, 1))
    return facts


def probe(access, key, targets):
    """From inside the slot (over SSH): which of ``targets`` answer a ping.

    {'ip': the guest's address, 'reachable': [...], 'unreachable': [...]}, or {'error': why}.
    The lab's isolation proof with the real guest (the busybox guest posts the same to the sink)."""
    script = 'ip -4 -o addr show scope global | awk \'{split($4, a, "/"); print "ip=" a[1]; exit}\'\n'
    for target in targets:
        quoted = shlex.quote(target)
        script += 'if ping -c 1 -W 1 %s >/dev/null 2>&1; then echo "up=%s"; else echo "down=%s"; fi\n' % (
            quoted, target, target)
    rc, out, err = ssh(access, key, script, timeout=30 + 3 * len(targets))
    if rc != 0:
        return {'error': 'the probe did not run (ssh exited %s: %s)' % (rc, (err or out).strip()[:200])}
    return parse_probe(out, targets)


def parse_probe(out, targets):
    """What probe's script printed: {'ip', 'reachable', 'unreachable'}; a target it did not
    report on is neither (and an unasked address is ignored)."""
    found = {'ip': None, 'reachable': [], 'unreachable': []}
    for line in out.splitlines():
        key, _sep, value = line.partition('=')
        if key == 'ip':
            found['ip'] = value
        elif key in ('up', 'down') and value in targets:
            found['reachable' if key == 'up' else 'unreachable'].append(value)
    return found


def port_silent(access, timeout=3):
    """Whether nothing answers on the allocation's public port from the client (after release)."""
    code = ('import socket, sys\n'
            'try:\n'
            '    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=%d).close(); print("open")\n'
            'except socket.timeout:\n'
            '    print("silent")\n'
            'except OSError as exc:\n'
            '    print("refused" if exc.errno == 111 else "error %%s" %% exc.errno)\n' % timeout)
    out = subprocess.run(['ip', 'netns', 'exec', CLIENT_NS, 'python3', '-c', code, access['ssh_host'],
                          str(access['ssh_port'])], capture_output=True, text=True).stdout.strip()
    return out
