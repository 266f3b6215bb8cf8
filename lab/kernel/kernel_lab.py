# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The real-kernel lab: a QEMU (TCG) guest that is a GPU host with a real kernel.

    python lab/kernel/kernel_lab.py build            # kernel + initramfs, cached
    python lab/kernel/kernel_lab.py run [-- CMD...]  # boot, run CMD in the guest, power off
    python lab/kernel/kernel_lab.py run --systemd [-- CMD...]  # the same under systemd as PID 1

The guest runs Debian's own kernel with an emulated Intel IOMMU (intel-iommu, interrupt
remapping, caching mode), two NUMA nodes (a pxb-pcie expander bridge on each), and on
each node a "slot": a display-class device standing in for the GPU (bochs-display,
class 0x038000, vendor 1234), an NVMe drive, and an NVMe controller with SR-IOV standing
in for the fabric PF. Behind a PCIe-to-PCI bridge a third display device shares its IOMMU
group with a NIC, the case the modules must refuse. Every device sits on its own root
port, so each gets its own IOMMU group, as on a host with ACS.

The guest's root filesystem is this machine's own, shared read-only over 9p, so the
guest runs the same virtualenv and checkout; /tmp, /run, /var/lib and /root are tmpfs in
the guest. CMD (default: the kernel-lab test suite) runs as root in a chroot of that
tree against the guest's /sys, /proc and /dev. Its output and exit status come back
through a second, writable 9p share.

With --systemd the guest boots into Debian's systemd instead (see run_systemd): its root is
an overlay of the host's tree with a tmpfs upper layer, and CMD (default: the test of
host_prep's systemd units) runs as the one service of the lab's target.

Everything built is cached under .build/kernel-lab/ and never committed.
"""

import argparse
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(REPO, '.build', 'kernel-lab')
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from tests.guest.debian import (  # noqa: E402
    Cpio, add_busybox, add_modules, download, kernel_package, module_order, write_initrd)

KERNEL_META = 'linux-image-amd64'
BUSYBOX = 'busybox-static'
# Loaded in this order (their dependencies first, from modules.dep). vfio is not built
# in to Debian's kernel: irqbypass, vfio, vfio_iommu_type1, vfio_virqfd, vfio-pci-core,
# vfio-pci come from here.
MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'nvme', 'vfio_iommu_type1', 'vfio_pci',
           'bridge', 'tun']   # bridge, tun: the slot VM's NIC (tests/kernel_lab/test_slot_vm.py)
BUSYBOX_APPLETS = ['sh', 'mount', 'insmod', 'chroot', 'poweroff', 'mkdir', 'cat', 'echo',
                   'grep', 'sync', 'uname', 'sleep', 'ls']
# Made tmpfs in the guest (the host's tree is shared read-only); /run must be one.
SCRATCH_DIRS = ['/run', '/tmp', '/var/lib', '/var/tmp', '/var/log', '/var/cache']
DEFAULT_COMMAND = ['.venv/bin/python', '-m', 'pytest', '-v', '-p', 'no:cacheprovider',
                   'tests/kernel_lab']


def log(message):
    print('kernel-lab: %s' % message, flush=True)


def _run(argv, **kwargs):
    return subprocess.run(argv, check=True, **kwargs)


def build():
    """Build (or reuse) vmlinuz and the initramfs; return their paths."""
    debs = os.path.join(CACHE, 'debs')
    kernel_deb = download(kernel_package(KERNEL_META), debs)
    busybox_deb = download(BUSYBOX, debs)
    with open(os.path.join(HERE, 'init'), 'rb') as handle:
        init = handle.read()
    key = hashlib.sha256(('%s|%s|%s|%s' % (os.path.basename(kernel_deb), os.path.basename(busybox_deb),
                                           ','.join(MODULES), ','.join(BUSYBOX_APPLETS))).encode())
    key.update(init)
    for code in (__file__, os.path.join(REPO, 'tests', 'guest', 'debian.py')):
        with open(code, 'rb') as handle:
            key.update(handle.read())
    key = key.hexdigest()[:16]
    out = os.path.join(CACHE, key)
    vmlinuz, initrd = os.path.join(out, 'vmlinuz'), os.path.join(out, 'initrd.img')
    if os.path.exists(initrd):
        return vmlinuz, initrd
    start = time.time()
    log('building the guest kernel and initramfs (%s)' % os.path.basename(kernel_deb))
    work = tempfile.mkdtemp(dir=CACHE)
    try:
        _run(['dpkg-deb', '-x', kernel_deb, os.path.join(work, 'kernel')])
        _run(['dpkg-deb', '-x', busybox_deb, os.path.join(work, 'busybox')])
        modules_dir = glob.glob(os.path.join(work, 'kernel', 'lib', 'modules', '*'))[0]
        order = module_order(modules_dir, MODULES)
        cpio = Cpio()
        for name in ('bin', 'sbin', 'proc', 'sys', 'dev', 'host', 'lib', 'lib/modules'):
            cpio.directory(name)
        add_busybox(cpio, os.path.join(work, 'busybox'), BUSYBOX_APPLETS)
        add_modules(cpio, modules_dir, order)
        cpio.file('init', init, 0o755)
        staging = os.path.join(work, 'out')
        os.makedirs(staging)
        write_initrd(os.path.join(staging, 'initrd.img'), cpio, level=1)
        shutil.copy(glob.glob(os.path.join(work, 'kernel', 'boot', 'vmlinuz-*'))[0],
                    os.path.join(staging, 'vmlinuz'))
        os.rename(staging, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log('built in %.1f s: %s' % (time.time() - start, out))
    return vmlinuz, initrd


def qemu_argv(vmlinuz, initrd, results, memory_mb=3072, standin_bar_gib=None):
    """The lab host's machine: q35 + intel-iommu, two NUMA nodes of two CPUs (two cores: one the
    host keeps, one for the node's slot) and 1.5 GiB each, two slots, a shared group; with
    ``standin_bar_gib`` (run --standin-bar-gib) also a GPU-sized BAR's stand-in, QEMU's
    pci-testdev with a 64-bit BAR of that many GiB behind a root port of its own
    (tests/kernel_lab/test_large_bar.py)."""
    half = memory_mb // 2
    argv = [
        'qemu-system-x86_64', '-machine', 'q35,kernel-irqchip=split', '-accel', 'tcg',
        '-cpu', 'max', '-smp', '4,sockets=2,cores=2,threads=1', '-m', '%dM' % memory_mb,
        '-object', 'memory-backend-ram,id=m0,size=%dM' % half,
        '-object', 'memory-backend-ram,id=m1,size=%dM' % half,
        '-numa', 'node,nodeid=0,cpus=0-1,memdev=m0', '-numa', 'node,nodeid=1,cpus=2-3,memdev=m1',
        '-device', 'intel-iommu,intremap=on,caching-mode=on',
        '-kernel', vmlinuz, '-initrd', initrd,
        '-append', 'console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=3',
        '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
        '-fsdev', 'local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap',
        '-device', 'virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot',
        '-fsdev', 'local,id=results,path=%s,security_model=none' % results,
        '-device', 'virtio-9p-pci,fsdev=results,mount_tag=results',
    ]
    for node, bus_nr in ((0, 0x20), (1, 0x40)):
        pxb = 'pxb%d' % node
        argv += ['-device', 'pxb-pcie,id=%s,bus_nr=%d,numa_node=%d,bus=pcie.0' % (pxb, bus_nr, node)]
        ports = [('gpu', 'bochs-display'),
                 ('nvme', 'nvme,serial=slot%d-nvme,drive=d%d' % (node, node)),
                 ('fabric', 'nvme,serial=fabric%d,subsys=fs%d,sriov_max_vfs=4,sriov_vq_flexible=8,'
                  'sriov_vi_flexible=4,max_ioqpairs=12,msix_qsize=12' % (node, node))]
        argv += ['-drive', 'if=none,id=d%d,format=raw,file=%s' % (
            node, os.path.join(results, 'nvme%d.img' % node))]
        argv += ['-device', 'nvme-subsys,id=fs%d,nqn=fabric%d' % (node, node)]
        for index, (name, device) in enumerate(ports):
            port = '%s-rp%d' % (pxb, index)
            argv += ['-device', 'pcie-root-port,id=%s,bus=%s,chassis=%d,slot=%d'
                     % (port, pxb, 10 + node * 10 + index, index)]
            argv += ['-device', '%s,bus=%s' % (device, port)]
    # A display device behind a PCIe-to-PCI bridge shares its group with a NIC there.
    argv += ['-device', 'pcie-root-port,id=rp-shared,bus=pcie.0,chassis=40,slot=4',
             '-device', 'pcie-pci-bridge,id=pcibr,bus=rp-shared',
             '-device', 'bochs-display,bus=pcibr,addr=1',
             '-device', 'e1000,bus=pcibr,addr=2,netdev=none0,romfile=',
             '-netdev', 'user,id=none0,restrict=on']
    if standin_bar_gib:
        argv += ['-device', 'pcie-root-port,id=rp-standin,bus=pcie.0,chassis=50,slot=5',
                 '-device', 'pci-testdev,bus=rp-standin,membar=%dG' % standin_bar_gib]
    return argv


def libvirt_lines():
    """run.sh lines that start libvirtd and virtlogd in the guest (no systemd there).

    libvirt writes under /etc/libvirt (domain XML), so it gets a writable copy of the
    host's, bound over it, without the host's domains and autostart links. QEMU runs in
    the guest's own mount namespace (``namespaces = []``): libvirt's private /dev for each
    domain cannot be built inside the lab's chroot, whose /dev is a bind mount (devpts is
    mounted there for the domain's serial console). The
    capability probe takes a while under TCG, so the daemons start before the tests;
    tests/kernel_lab/test_slot_vm.py waits for them to answer.
    """
    etc = '/run/lab/etc-libvirt'
    return [
        'if [ -x /usr/sbin/libvirtd ] && [ -d /etc/libvirt ]; then',
        '  mkdir -p %s && cp -a /etc/libvirt/. %s/' % (etc, etc),
        '  rm -rf %s/qemu/*.xml %s/qemu/autostart %s/qemu/networks/autostart '
        '%s/storage/autostart' % (etc, etc, etc, etc),
        "  echo 'namespaces = []' >> %s/qemu.conf" % etc,
        '  mount --bind %s /etc/libvirt' % etc,
        '  mkdir -p /var/log/libvirt /var/lib/libvirt /var/cache/libvirt /run/libvirt',
        # QEMU's serial console is a pty.
        '  mkdir -p /dev/pts && mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts',
        '  /usr/sbin/virtlogd -d && /usr/sbin/libvirtd -d',
        'fi',
    ]


def run(command, timeout=900, keep=None, standin_bar_gib=None):
    """Boot the lab, run ``command`` (argv, relative to the checkout) inside; return its rc."""
    vmlinuz, initrd = build()
    results = _results(keep, 'kernel-lab-')
    script = os.path.join(results, 'run.sh')
    # The host's tree is read-only in the guest: writable tmpfs where programs write, but
    # never over the directory holding the checkout (a CI clone may live under /tmp).
    scratch = [d for d in SCRATCH_DIRS
               if not (REPO + '/').startswith(d + '/') and os.path.isdir(d)]
    with open(script, 'w') as handle:
        for directory in scratch:
            handle.write('mount -t tmpfs -o mode=1777 tmpfs %s\n' % shlex.quote(directory))
        handle.write('mkdir -p /run/lab/home /run/lab/tmp\n')
        handle.write('\n'.join(libvirt_lines()) + '\n')
        handle.write('cd %s || exit 1\n' % shlex.quote(REPO))
        handle.write('export HOME=/run/lab/home TMPDIR=/run/lab/tmp GPUAAS_KERNEL_LAB=1 '
                     'PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8\n')
        handle.write('{ %s; echo $? > /mnt/rc; } 2>&1 | tee /mnt/output.log\n'
                     % ' '.join(shlex.quote(a) for a in command))
        handle.write('for pid in /run/libvirtd.pid /run/virtlogd.pid; do '
                     '[ -f $pid ] && kill "$(cat $pid)"; done 2>/dev/null\n')
    return _boot(qemu_argv(vmlinuz, initrd, results, standin_bar_gib=standin_bar_gib), results, timeout, keep,
                 'the lab guest')


def _results(keep, prefix):
    """The results share of one boot (``keep``, or a new temporary directory) with the
    slots' blank 64 MiB NVMe drive images in it."""
    results = keep or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(results, exist_ok=True)
    for node in (0, 1):
        with open(os.path.join(results, 'nvme%d.img' % node), 'wb') as handle:
            handle.truncate(64 << 20)
    return results


def _boot(argv, results, timeout, keep, what):
    """Run the guest until it powers off; return the exit status its command left in
    ``results`` (124: it ran past ``timeout``; 1: it left none). A passing run's temporary
    results directory goes (its drive images, which the wipe tests fill, and the logs)."""
    rc_file = os.path.join(results, 'rc')
    if os.path.exists(rc_file):
        os.unlink(rc_file)
    log('booting %s (TCG); results in %s' % (what, results))
    start = time.time()
    try:
        subprocess.run(argv, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        log('the guest did not finish within %d s' % timeout)
        return 124
    log('guest ran for %.1f s' % (time.time() - start))
    if not os.path.exists(rc_file):
        log('the command left no exit status: the guest failed before running it')
        return 1
    with open(rc_file) as handle:
        rc = int(handle.read().strip() or 1)
    if keep is None and rc == 0:
        shutil.rmtree(results)
    return rc



# The systemd boot (run --systemd): the same machine, booted into Debian's systemd as PID 1
# on an overlay of the host's tree, to run host_prep's units for real (the host's own PID 1
# is no systemd). Its own initramfs (init_systemd) adds the overlay module; the guest
# kernel's modules, with a modules.dep, are kept under the cache and bound over
# /lib/modules, so that modprobe (Open vSwitch, nftables) works in the guest.
SYSTEMD_MODULES = MODULES + ['overlay']
SYSTEMD_APPLETS = BUSYBOX_APPLETS + ['umount', 'switch_root']
SYSTEMD_TARGET = 'gpuaas-lab.target'
SYSTEMD_SERVICE = 'gpuaas-lab.service'
SYSTEMD_COMMAND = ['.venv/bin/python', '-m', 'pytest', '-v', '-p', 'no:cacheprovider',
                   'tests/kernel_lab/test_systemd_units.py']
# The host's own state of what host_prep manages: the guest starts from an empty node, not
# from a copy of whatever this (shared) machine holds now. Removed in the overlay only.
SYSTEMD_FRESH = ['/etc/openvswitch/conf.db', '/var/lib/openvswitch/*',
                 '/etc/gpuaas', '/var/lib/gpuaas', '/var/log/gpuaas', '/usr/local/lib/gpuaas',
                 '/etc/libvirt/qemu/*.xml', '/var/lib/libvirt/qemu/*', '/var/cache/libvirt/qemu',
                 '/etc/systemd/system/gpuaas-*', '/etc/modules-load.d/gpuaas-vfio.conf',
                 '/etc/udev/rules.d/70-gpuaas-sriov.rules']


def build_modules():
    """The guest kernel's /lib/modules (with modules.dep), extracted once; return its path."""
    kernel_deb = download(kernel_package(KERNEL_META), os.path.join(CACHE, 'debs'))
    root = os.path.join(CACHE, 'modules-' + os.path.basename(kernel_deb)[:-len('.deb')])
    modules = os.path.join(root, 'lib', 'modules')
    if os.path.isdir(modules):
        return modules
    start = time.time()
    work = tempfile.mkdtemp(dir=CACHE)
    try:
        _run(['dpkg-deb', '-x', kernel_deb, os.path.join(work, 'kernel')])
        version = os.listdir(os.path.join(work, 'kernel', 'lib', 'modules'))[0]
        _run(['depmod', '-b', os.path.join(work, 'kernel'), version])
        shutil.rmtree(os.path.join(work, 'kernel', 'boot'), ignore_errors=True)
        shutil.rmtree(os.path.join(work, 'kernel', 'usr'), ignore_errors=True)
        os.rename(os.path.join(work, 'kernel'), root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log('extracted the guest kernel\'s modules in %.1f s: %s' % (time.time() - start, modules))
    return modules


def build_systemd():
    """Build (or reuse) the systemd boot's vmlinuz, initramfs and modules; return their paths."""
    vmlinuz, _initrd = build()
    modules = build_modules()
    busybox_deb = download(BUSYBOX, os.path.join(CACHE, 'debs'))
    with open(os.path.join(HERE, 'init_systemd'), 'rb') as handle:
        init = handle.read()
    key = hashlib.sha256(('systemd|%s|%s|%s|%s' % (vmlinuz, os.path.basename(busybox_deb),
                                                   ','.join(SYSTEMD_MODULES),
                                                   ','.join(SYSTEMD_APPLETS))).encode())
    key.update(init)
    with open(os.path.join(REPO, 'tests', 'guest', 'debian.py'), 'rb') as handle:
        key.update(handle.read())
    out = os.path.join(CACHE, 'systemd-' + key.hexdigest()[:16])
    initrd = os.path.join(out, 'initrd.img')
    if os.path.exists(initrd):
        return vmlinuz, initrd, modules
    start = time.time()
    work = tempfile.mkdtemp(dir=CACHE)
    try:
        _run(['dpkg-deb', '-x', busybox_deb, os.path.join(work, 'busybox')])
        modules_dir = os.path.join(modules, os.listdir(modules)[0])
        cpio = Cpio()
        for name in ('bin', 'sbin', 'proc', 'sys', 'dev', 'lib', 'lib/modules'):
            cpio.directory(name)
        add_busybox(cpio, os.path.join(work, 'busybox'), SYSTEMD_APPLETS)
        add_modules(cpio, modules_dir, module_order(modules_dir, SYSTEMD_MODULES))
        cpio.file('init', init, 0o755)
        staging = os.path.join(work, 'out')
        os.makedirs(staging)
        write_initrd(os.path.join(staging, 'initrd.img'), cpio, level=1)
        os.rename(staging, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log('built the systemd boot\'s initramfs in %.1f s: %s' % (time.time() - start, out))
    return vmlinuz, initrd, modules


def systemd_units(timeout):
    """The lab's target and service: run /mnt/run.sh once, then power the guest off."""
    target = '\n'.join([
        '[Unit]',
        'Description=gpuaas kernel lab: the lab command under systemd, nothing else',
        # What a host's boot reaches before its services (sockets, timers, paths), and the
        # lab's command; nothing of multi-user.target.
        'Wants=basic.target',
        'Requires=%s' % SYSTEMD_SERVICE,
        'After=%s' % SYSTEMD_SERVICE,
        'AllowIsolate=yes',
        # A boot that never gets to the command must not hang the suite.
        'JobTimeoutSec=%d' % timeout,
        'JobTimeoutAction=poweroff-force',
        '']) + '\n'
    service = '\n'.join([
        '[Unit]',
        'Description=gpuaas kernel lab: run the lab command, then power off',
        'SuccessAction=poweroff-force',
        'FailureAction=poweroff-force',
        '',
        '[Service]',
        'Type=oneshot',
        'ExecStart=/bin/sh /mnt/run.sh',
        'StandardOutput=journal+console',
        'StandardError=journal+console',
        'TimeoutStartSec=infinity',
        '']) + '\n'
    return {SYSTEMD_TARGET: target, SYSTEMD_SERVICE: service}


def systemd_setup(modules):
    """The script init_systemd runs in a chroot of the guest's overlay root before systemd."""
    quote = shlex.quote
    lines = [
        'set -e',
        # Nothing the host enabled starts in the lab: only the target's own dependencies
        # (and what they pull from /lib/systemd/system) start.
        'rm -rf /etc/systemd/system/*.target.wants',
        'rm -rf %s' % ' '.join(SYSTEMD_FRESH),
        # The host's tree is a container's: systemd would take the guest for one (and then
        # ignore the kernel command line, systemd.unit= with it).
        'rm -f /.dockerenv /run/.containerenv',
        # No emptying of /tmp at boot (tmp.conf's D /tmp): the checkout may live there.
        'mkdir -p /etc/tmpfiles.d',
        'ln -sf /dev/null /etc/tmpfiles.d/tmp.conf',
        # postgresql-common's generator (a shell script, seconds under TCG at every boot
        # and daemon-reload) makes units for a database the lab never starts.
        'mkdir -p /etc/systemd/system-generators',
        'ln -sf /dev/null /etc/systemd/system-generators/postgresql-generator',
        'cp /mnt/systemd/%s /mnt/systemd/%s /etc/systemd/system/' % (SYSTEMD_TARGET, SYSTEMD_SERVICE),
        'mkdir -p /lib/modules',
        'mount --bind %s /lib/modules' % quote(modules),
    ]
    return ''.join(line + '\n' for line in lines)


def systemd_qemu_argv(vmlinuz, initrd, results):
    """The lab's machine (qemu_argv), its kernel command line naming the lab's target."""
    argv = qemu_argv(vmlinuz, initrd, results)
    append = argv.index('-append') + 1
    argv[append] += ' systemd.unit=%s systemd.firstboot=off systemd.show_status=error' % SYSTEMD_TARGET
    return argv


def run_systemd(command, timeout=900, keep=None):
    """Boot the lab into systemd, run ``command`` there as a service; return its rc."""
    vmlinuz, initrd, modules = build_systemd()
    results = _results(keep, 'kernel-lab-systemd-')
    os.makedirs(os.path.join(results, 'systemd'), exist_ok=True)
    for name, text in systemd_units(timeout).items():
        with open(os.path.join(results, 'systemd', name), 'w') as handle:
            handle.write(text)
    with open(os.path.join(results, 'systemd-setup.sh'), 'w') as handle:
        handle.write(systemd_setup(modules))
    with open(os.path.join(results, 'run.sh'), 'w') as handle:
        handle.write('mkdir -p /run/lab/home /run/lab/tmp\n')
        handle.write('cd %s || exit 1\n' % shlex.quote(REPO))
        handle.write('export HOME=/run/lab/home TMPDIR=/run/lab/tmp GPUAAS_KERNEL_LAB=1 '
                     'GPUAAS_KERNEL_LAB_MODE=systemd PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8\n')
        handle.write('{ %s; echo $? > /mnt/rc; } 2>&1 | tee /mnt/output.log\n'
                     % ' '.join(shlex.quote(a) for a in command))
        # What systemd did, for when a unit misbehaves.
        handle.write('journalctl -b --no-pager -o short-monotonic > /mnt/journal.log 2>&1\n')
        handle.write('sync\n')
    return _boot(systemd_qemu_argv(vmlinuz, initrd, results), results, timeout + 60, keep,
                 'the lab guest into systemd')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='action', required=True)
    sub.add_parser('build', help='build (or reuse) the guest kernel and initramfs')
    run_parser = sub.add_parser('run', help='boot the lab and run a command inside')
    run_parser.add_argument('--timeout', type=int, default=900)
    run_parser.add_argument('--results', help='directory to keep results in')
    run_parser.add_argument('--systemd', action='store_true',
                            help='boot into systemd as PID 1 (default command: %s)' % SYSTEMD_COMMAND[-1])
    run_parser.add_argument('--standin-bar-gib', type=int,
                            help="add QEMU's pci-testdev with a 64-bit BAR of this many GiB (a power of two)")
    run_parser.add_argument('command', nargs='*', help='argv to run in the checkout')
    args = parser.parse_args(argv)
    if args.action == 'build':
        print('\n'.join(build()))
        return 0
    if args.systemd:
        return run_systemd(args.command or SYSTEMD_COMMAND, timeout=args.timeout, keep=args.results)
    return run(args.command or DEFAULT_COMMAND, timeout=args.timeout, keep=args.results,
               standin_bar_gib=args.standin_bar_gib)


if __name__ == '__main__':
    sys.exit(main())
