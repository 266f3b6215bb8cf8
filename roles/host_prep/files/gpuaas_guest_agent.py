# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuaas guest agent: a slot VM's health, GPU metrics and first-boot acceptance check.

    python3 gpuaas_guest_agent.py [--env-file /etc/gpuaas/telemetry.env] [--interval 30] [--once]

It runs inside the slot VM (Python 3.11 standard library only) and posts JSON objects to the
node's telemetry sink with the allocation's token. The sink address, the token and the
allocation id come from the env file the seed writes (GPUAAS_TELEMETRY_SINK,
GPUAAS_TELEMETRY_TOKEN, GPUAAS_ALLOCATION_ID): never from argv, and the token is never
logged. What it posts:

* ``{"kind": "health", ...}`` every ``--interval`` seconds: uptime, load, memory, the root
  disk and, where ``nvidia-smi`` runs, per GPU utilisation, memory, temperature, power, ECC
  error counts and the kernel's Xid errors (``"gpu": {"available": false, "reason": ...}``
  where it does not: "no GPU visible" is said, not hidden).
* ``{"kind": "acceptance", ...}`` once, on first boot: :func:`check_slot` of what the guest
  sees (sysfs, nvidia-smi, CUDA measurements where torch with CUDA is installed) against the
  slot's approved facts (``--slot-file``, which the seed writes) and the baseline of the GPU
  model. A marker in ``--state-dir`` records that the result was stored.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

ENV_FILE = '/etc/gpuaas/telemetry.env'
SLOT_FILE = '/etc/gpuaas/slot.json'
STATE_DIR = '/var/lib/gpuaas-agent'
ENV_KEYS = ('GPUAAS_TELEMETRY_SINK', 'GPUAAS_TELEMETRY_TOKEN', 'GPUAAS_ALLOCATION_ID')
# A measured figure below its baseline by more than this fraction fails the check.
TOLERANCE = 0.15
# What a healthy slot of each GPU model delivers, measured inside a passthrough guest
# (tests/fixtures/real/h100-passthrough-guest/acceptance-baseline.json; a unit test keeps
# them equal). Keyed by nvidia-smi's product name.
BASELINES = {
    'NVIDIA H100 80GB HBM3': {'h2d_GBps_pinned': 53.7, 'd2h_GBps_pinned': 54.6,
                              'bf16_matmul_TFLOPs_8192': 738.6},
}
# The measured figures the check compares, with their units for the reason text.
MEASURES = (('h2d_GBps_pinned', 'host-to-device bandwidth', 'GB/s'),
            ('d2h_GBps_pinned', 'device-to-host bandwidth', 'GB/s'),
            ('bf16_matmul_TFLOPs_8192', 'bf16 8192x8192 matmul', 'TFLOP/s'))
GPU_CLASSES = ('0x0300', '0x0302')     # VGA and 3D controller (an H100 is 0x030200)
NVME_CLASS = '0x0108'
NETWORK_CLASSES = ('0x0200', '0x0207')   # Ethernet and InfiniBand
PARAVIRTUAL_VENDORS = ('0x1af4', '0x1b36')   # virtio and QEMU's own devices
MAX_BARS = 6
SPEED_RE = re.compile(r'^\s*([0-9]+(?:\.[0-9]+)?)\s*GT/s')
XID_RE = re.compile(r'NVRM: Xid \(([^)]*)\): (\d+)')


class AgentError(Exception):
    """A configuration the agent cannot run with; the message says which file and why."""


# -- configuration ---------------------------------------------------------------------------

def read_env(path):
    """The env file as {key: value}; AgentError naming the missing key (never a value)."""
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except OSError as exc:
        raise AgentError('cannot read %s: %s' % (path, exc.strerror))
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#') or '=' not in line:
            continue
        key, value = line.split('=', 1)
        env[key.strip()] = value.strip().strip('"\'')
    missing = [key for key in ENV_KEYS if not env.get(key)]
    if missing:
        raise AgentError('%s does not set %s' % (path, ', '.join(missing)))
    if not env['GPUAAS_TELEMETRY_SINK'].startswith(('http://', 'https://')):
        raise AgentError('%s: GPUAAS_TELEMETRY_SINK is not an http(s) URL' % path)
    return env


# -- health ------------------------------------------------------------------------------------

def _read(path):
    try:
        with open(path, encoding='ascii', errors='replace') as handle:
            return handle.read()
    except OSError:
        return None


def health(proc='/proc', disk='/'):
    """Uptime, load, memory and the root disk; a value that cannot be read is None."""
    out = {'uptime_s': None, 'load': None, 'memory_mib': None, 'disk_gib': None}
    text = _read(os.path.join(proc, 'uptime'))
    if text:
        out['uptime_s'] = round(float(text.split()[0]), 1)
    text = _read(os.path.join(proc, 'loadavg'))
    if text:
        out['load'] = [float(value) for value in text.split()[:3]]
    text = _read(os.path.join(proc, 'meminfo'))
    if text:
        fields = dict((line.split(':')[0], int(line.split()[1])) for line in text.splitlines()
                      if ':' in line and len(line.split()) >= 2 and line.split()[1].isdigit())
        if 'MemTotal' in fields:
            out['memory_mib'] = {'total': fields['MemTotal'] // 1024,
                                 'available': fields.get('MemAvailable', fields.get('MemFree', 0)) // 1024}
    try:
        usage = shutil.disk_usage(disk)
        out['disk_gib'] = {'path': disk, 'total': round(usage.total / 2 ** 30, 2),
                           'free': round(usage.free / 2 ** 30, 2)}
    except OSError:
        pass
    return out


# -- GPU metrics -------------------------------------------------------------------------------

def number(text):
    """'49 C', '77.28 W', '81559 MiB', '16x' -> a float; 'N/A', '[N/A]', '' -> None."""
    if text is None:
        return None
    match = re.match(r'^\s*(-?[0-9]+(?:\.[0-9]+)?)', text)
    return float(match.group(1)) if match else None


def _text(node, path):
    found = node.find(path)
    return found.text.strip() if found is not None and found.text else None


def _ecc(node):
    """(corrected, uncorrected) summed over a volatile/aggregate block; None if it has none."""
    if node is None:
        return None
    corrected = uncorrected = 0
    seen = False
    for item in node.iter():
        value = number(item.text) if len(item) == 0 else None
        if value is None or 'correctable' not in item.tag:
            continue
        seen = True
        if 'uncorrectable' in item.tag:
            uncorrected += int(value)
        else:
            corrected += int(value)
    return {'corrected': corrected, 'uncorrected': uncorrected} if seen else None


def parse_nvidia_smi_xml(text):
    """``nvidia-smi -q -x`` as a list of per-GPU dicts (ValueError when it is not that XML)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError('nvidia-smi -q -x is not XML: %s' % exc)
    if root.tag != 'nvidia_smi_log':
        raise ValueError('nvidia-smi -q -x: the root element is %r, not nvidia_smi_log' % root.tag)
    gpus = []
    for gpu in root.findall('gpu'):
        device_id = (_text(gpu, 'pci/pci_device_id') or '').lower()   # '233010DE': device, vendor
        power = _text(gpu, 'gpu_power_readings/average_power_draw') or _text(gpu, 'gpu_power_readings/power_draw') \
            or _text(gpu, 'power_readings/power_draw')
        gpus.append({
            'bus_id': gpu.get('id'),
            'name': _text(gpu, 'product_name'),
            'pci_id': '%s:%s' % (device_id[4:], device_id[:4]) if len(device_id) == 8 else None,
            'link_gen': number(_text(gpu, 'pci/pci_gpu_link_info/pcie_gen/current_link_gen')),
            'link_width': number(_text(gpu, 'pci/pci_gpu_link_info/link_widths/current_link_width')),
            'utilization_pct': number(_text(gpu, 'utilization/gpu_util')),
            'memory_utilization_pct': number(_text(gpu, 'utilization/memory_util')),
            'memory_used_mib': number(_text(gpu, 'fb_memory_usage/used')),
            'memory_total_mib': number(_text(gpu, 'fb_memory_usage/total')),
            'temperature_c': number(_text(gpu, 'temperature/gpu_temp')),
            'power_w': number(power),
            'ecc_mode': _text(gpu, 'ecc_mode/current_ecc'),
            'ecc_volatile': _ecc(gpu.find('ecc_errors/volatile')),
            'ecc_aggregate': _ecc(gpu.find('ecc_errors/aggregate')),
            'remapped_rows_pending': _text(gpu, 'remapped_rows/remapped_row_pending'),
        })
    return {'driver_version': _text(root, 'driver_version'), 'cuda_version': _text(root, 'cuda_version'),
            'gpus': gpus}


def parse_xids(text):
    """The Xid errors in kernel log text: [{'device': 'PCI:0000:00:06', 'xid': 79}, ...]."""
    return [{'device': match.group(1).split(',')[0], 'xid': int(match.group(2))}
            for match in XID_RE.finditer(text or '')]


def _run(argv, timeout=30):
    """(stdout, None) or (None, why it could not run); argv lists only, LANG=C."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(os.environ, LANG='C', LC_ALL='C'))
    except FileNotFoundError:
        return None, '%s is not installed' % argv[0]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, '%s did not run: %s' % (argv[0], exc)
    if done.returncode != 0:
        return None, '%s exited %d: %s' % (argv[0], done.returncode, (done.stderr or done.stdout).strip()[:200])
    return done.stdout, None


def gpu_metrics():
    """What nvidia-smi reports now, or {'available': False, 'reason': ...}."""
    text, why = _run(['nvidia-smi', '-q', '-x'])
    if text is None:
        return {'available': False, 'reason': why}
    try:
        smi = parse_nvidia_smi_xml(text)
    except ValueError as exc:
        return {'available': False, 'reason': str(exc)}
    if not smi['gpus']:
        return {'available': False, 'reason': 'no GPU visible to nvidia-smi'}
    kernel_log, _why = _run(['dmesg'])
    xids = parse_xids(kernel_log)
    return dict(smi, available=True, xid_errors=len(xids), xids=xids[-10:])


# -- what the guest sees of its PCI devices ----------------------------------------------------

def parse_resource(text):
    """A sysfs ``resource`` file as the sizes of its six BARs (0 where a BAR is unmapped)."""
    sizes = []
    for line in (text or '').splitlines()[:MAX_BARS]:
        parts = line.split()
        if len(parts) != 3:
            raise ValueError('a resource line is not "start end flags": %r' % line)
        start, end = int(parts[0], 16), int(parts[1], 16)
        sizes.append(end - start + 1 if end > start else 0)
    return sizes + [0] * (MAX_BARS - len(sizes))


def read_pci(sysfs='/sys'):
    """Every PCI function the guest sees: address, class, vendor, device, link, BAR sizes."""
    base = os.path.join(sysfs, 'bus', 'pci', 'devices')
    functions = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return functions
    for name in names:
        def attr(key, path=os.path.join(base, name)):
            text = _read(os.path.join(path, key))
            return text.strip() if text is not None else None
        try:
            bars = parse_resource(attr('resource'))
        except ValueError:
            bars = None
        functions.append({'address': name, 'class': attr('class'), 'vendor': attr('vendor'),
                          'device': attr('device'), 'link_speed': attr('current_link_speed'),
                          'link_width': attr('current_link_width'), 'bars': bars})
    return functions


# -- the acceptance check: a pure function ----------------------------------------------------

def _check(name, ok, reason):
    return {'name': name, 'status': 'passed' if ok else 'failed', 'reason': reason}


def _skip(name, reason):
    return {'name': name, 'status': 'skipped', 'reason': reason}


def _pci_id(function):
    return '%s:%s' % ((function.get('vendor') or '')[2:], (function.get('device') or '')[2:])


def _speed(text):
    match = SPEED_RE.match(text or '')
    return float(match.group(1)) if match else None


def _size(size):
    for unit, scale in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if size >= scale and size % scale == 0:
            return '%d %s' % (size // scale, unit)
    return '%d bytes' % size


def check_approved(approved):
    """The approved facts the check needs, or ValueError naming the field and its value."""
    if not isinstance(approved, dict):
        raise ValueError('the approved facts must be a JSON object')
    if not re.fullmatch(r'[0-9a-f]{4}:[0-9a-f]{4}', str(approved.get('gpu_model'))):
        raise ValueError("approved gpu_model %r is not 'vendor:device' (e.g. '10de:2330')"
                         % (approved.get('gpu_model'),))
    if _speed(approved.get('link_speed')) is None:
        raise ValueError("approved link_speed %r is not like '32.0 GT/s PCIe'" % (approved.get('link_speed'),))
    width = approved.get('link_width')
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 32:
        raise ValueError('approved link_width %r is not a width from 1 to 32' % (width,))
    return approved


def check_slot(functions, approved, smi=None, measured=None, baselines=None, tolerance=TOLERANCE):
    """The slot against what was approved: {'status': 'passed'|'failed', 'checks': [...]}.

    ``functions`` is :func:`read_pci`'s list, ``approved`` the slot's approved facts
    (gpu_model 'vendor:device', link_speed, link_width, optional bars {index: size},
    nvme and fabric_vf: true, false or a 'vendor:device'), ``smi`` what
    :func:`parse_nvidia_smi_xml` read (None without nvidia-smi), ``measured`` the CUDA
    figures (None without CUDA, or {'unavailable': why}), ``baselines`` {product name: figures}.
    Every check is listed with its reason; a skipped one does not fail the slot, a check
    that cannot see fails it."""
    approved = check_approved(approved)
    checks = []
    gpus = [f for f in functions if (f.get('class') or '').startswith(GPU_CLASSES)]
    gpu = next((f for f in gpus if _pci_id(f) == approved['gpu_model']), None)
    if not gpus:
        checks.append(_check('gpu_visible', False, 'no GPU visible (approved %s)' % approved['gpu_model']))
    elif gpu is None:
        checks.append(_check('gpu_visible', False, 'the visible GPU is %s, approved %s' % (
            ', '.join(_pci_id(f) for f in gpus), approved['gpu_model'])))
    else:
        checks.append(_check('gpu_visible', True, 'GPU %s at %s' % (approved['gpu_model'], gpu['address'])))
    if gpu is None:
        for name in ('link_speed', 'link_width', 'bars_mapped'):
            checks.append(_check(name, False, 'no GPU with the approved id to check'))
    else:
        speed, want = _speed(gpu.get('link_speed')), _speed(approved['link_speed'])
        checks.append(_check('link_speed', speed == want, 'link %s, approved %s' % (
            gpu.get('link_speed') or 'unreadable', approved['link_speed'])))
        width = gpu.get('link_width')
        checks.append(_check('link_width', width == str(approved['link_width']), 'link x%s, approved x%d' % (
            width or ' unreadable', approved['link_width'])))
        checks.append(_bars(gpu.get('bars'), approved.get('bars')))
    checks.append(_companion('nvme', approved.get('nvme'), functions,
                             lambda f: (f.get('class') or '').startswith(NVME_CLASS), 'NVMe controller'))
    checks.append(_companion('fabric_vf', approved.get('fabric_vf'), functions,
                             lambda f: (f.get('class') or '').startswith(NETWORK_CLASSES)
                             and f.get('vendor') not in PARAVIRTUAL_VENDORS, 'fabric network function'))
    checks.extend(_performance(smi, measured, baselines or BASELINES, tolerance, gpu is not None))
    failed = [c['name'] for c in checks if c['status'] == 'failed']
    return {'status': 'failed' if failed else 'passed', 'failed': failed, 'checks': checks,
            'approved': approved}


def _bars(sizes, want):
    if sizes is None:
        return _check('bars_mapped', False, "the GPU's resource file is unreadable")
    if want:
        wrong = ['BAR %s is %s, approved %s' % (
            index, _size(sizes[int(index)]) if sizes[int(index)] else 'not mapped', _size(int(size)))
            for index, size in sorted(want.items()) if sizes[int(index)] != int(size)]
        return _check('bars_mapped', not wrong, '; '.join(wrong) or 'BARs %s mapped as approved' % ', '.join(
            str(index) for index in sorted(want)))
    mapped = [index for index, size in enumerate(sizes) if size]
    if 0 not in mapped:
        return _check('bars_mapped', False, 'BAR 0 (registers) is not mapped')
    if len(mapped) < 2:
        return _check('bars_mapped', False, 'only BAR 0 is mapped: no memory aperture')
    return _check('bars_mapped', True, 'BARs %s mapped (%s)' % (
        ', '.join(str(i) for i in mapped), ', '.join(_size(sizes[i]) for i in mapped)))


def _companion(name, want, functions, kind, what):
    if not want:
        return _skip(name, 'the slot has no approved %s' % what)
    found = [f for f in functions if kind(f) and (want is True or _pci_id(f) == want)]
    wanted = what if want is True else '%s %s' % (what, want)
    if not found:
        return _check(name, False, 'no %s visible' % wanted)
    return _check(name, True, '%s at %s' % (wanted, found[0]['address']))


def _performance(smi, measured, baselines, tolerance, gpu_seen):
    names = [name for name, _what, _unit in MEASURES]
    if not gpu_seen:
        return [_skip(name, 'no GPU with the approved id to measure') for name in names]
    if not smi or not smi.get('gpus'):
        return [_skip(name, 'nvidia-smi is not available: the GPU model (and its baseline) is unknown')
                for name in names]
    model = smi['gpus'][0].get('name')
    baseline = baselines.get(model)
    if baseline is None:
        return [_skip(name, 'no baseline for %s' % model) for name in names]
    if not measured or measured.get('unavailable'):
        why = (measured or {}).get('unavailable') or 'CUDA is not available in the guest'
        return [_skip(name, why) for name in names]
    checks = []
    for name, what, unit in MEASURES:
        value, floor = measured.get(name), baseline[name] * (1 - tolerance)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            checks.append(_check(name, False, '%s was not measured' % what))
            continue
        checks.append(_check(name, value >= floor, '%s %.1f %s, baseline %.1f %s (at least %.1f)' % (
            what, value, unit, baseline[name], unit, floor)))
    return checks


# -- CUDA measurements (only where the guest has torch with CUDA) -----------------------------

def measure_cuda(size_mib=1024, reps=10):
    """Pinned host<->device bandwidth and a bf16 8192^2 matmul, or {'unavailable': why}."""
    try:
        import torch  # noqa: PLC0415 - optional: the tenant's image may have it
    except ImportError:
        return {'unavailable': 'CUDA is not available in the guest (no torch to measure with)'}
    if not torch.cuda.is_available():
        return {'unavailable': 'torch sees no CUDA device'}

    def timed(action):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _rep in range(reps):
            action()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps
    nbytes = size_mib * 2 ** 20
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    device = torch.empty(nbytes, dtype=torch.uint8, device='cuda')
    h2d = timed(lambda: device.copy_(host, non_blocking=True))
    d2h = timed(lambda: host.copy_(device, non_blocking=True))
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device='cuda')
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device='cuda')
    matmul = timed(lambda: a @ b)
    return {'h2d_GBps_pinned': round(nbytes / h2d / 1e9, 1), 'd2h_GBps_pinned': round(nbytes / d2h / 1e9, 1),
            'bf16_matmul_TFLOPs_8192': round(2 * 8192 ** 3 / matmul / 1e12, 1)}


# -- posting -----------------------------------------------------------------------------------

def post(env, body, timeout=10):
    """POST one object to the sink: (HTTP status, the sink's message). Never shows the token."""
    data = json.dumps(body, allow_nan=False, sort_keys=True).encode('utf-8')
    request = urllib.request.Request(env['GPUAAS_TELEMETRY_SINK'], data=data, method='POST', headers={
        'Authorization': 'Bearer %s' % env['GPUAAS_TELEMETRY_TOKEN'], 'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, ''
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode('utf-8')).get('message', '')
        except (ValueError, AttributeError, OSError):
            message = ''
        return exc.code, message
    except (urllib.error.URLError, OSError) as exc:
        return None, 'the sink is not reachable: %s' % getattr(exc, 'reason', exc)


def acceptance(args, smi_xml=None):
    """The first-boot acceptance body (approved facts from --slot-file)."""
    try:
        with open(args.slot_file, encoding='utf-8') as handle:
            approved = json.load(handle)
        if args.baseline_file:
            with open(args.baseline_file, encoding='utf-8') as handle:
                baseline = json.load(handle)
            baselines = {baseline['gpu']: baseline}
        else:
            baselines = BASELINES
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {'kind': 'acceptance', 'status': 'failed', 'failed': ['approved_facts'], 'checks': [
            _check('approved_facts', False, 'the approved facts cannot be read: %s' % exc)]}
    if smi_xml is None:
        smi_xml, _why = _run(['nvidia-smi', '-q', '-x'])
    try:
        smi = parse_nvidia_smi_xml(smi_xml) if smi_xml else None
    except ValueError:
        smi = None
    # Measured first: a GPU that lowers its link speed when idle runs it at full speed under load,
    # which is when the link is read.
    measured = measure_cuda() if smi and smi['gpus'] else None
    try:
        result = check_slot(read_pci(args.sysfs), approved, smi, measured, baselines, args.tolerance)
    except ValueError as exc:
        result = {'status': 'failed', 'failed': ['approved_facts'],
                  'checks': [_check('approved_facts', False, str(exc))]}
    return dict(result, kind='acceptance', measured=measured)


def log(message):
    sys.stderr.write('gpuaas-agent: %s\n' % message)
    sys.stderr.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--env-file', default=ENV_FILE, help='the file with the sink, token and allocation id')
    parser.add_argument('--slot-file', default=SLOT_FILE, help="the slot's approved facts (JSON)")
    parser.add_argument('--state-dir', default=STATE_DIR, help='where the acceptance marker is kept')
    parser.add_argument('--baseline-file', help="a baseline (acceptance-baseline.json's format) instead of the agent's")
    parser.add_argument('--sysfs', default='/sys')
    parser.add_argument('--proc', default='/proc')
    parser.add_argument('--interval', type=float, default=30.0, help='seconds between health samples (5 to 3600)')
    parser.add_argument('--tolerance', type=float, default=TOLERANCE)
    parser.add_argument('--once', action='store_true', help='post the acceptance result (if due) and one sample')
    args = parser.parse_args(argv)
    if not 5 <= args.interval <= 3600:
        parser.error('--interval %r is not from 5 to 3600 seconds' % args.interval)
    if not 0 <= args.tolerance < 1:
        parser.error('--tolerance %r is not from 0 to 1' % args.tolerance)
    try:
        env = read_env(args.env_file)
    except AgentError as exc:
        log(str(exc))
        return 2
    marker = os.path.join(args.state_dir, 'acceptance-%s.done' % env['GPUAAS_ALLOCATION_ID'])
    result = None
    while True:
        if not os.path.exists(marker):
            # Checked (and measured) once per boot; a result the sink did not store is posted again.
            result = result or acceptance(args)
            status, message = post(env, result)
            log('acceptance %s (%s): sink answered %s %s' % (
                result['status'], ', '.join(result['failed']) or 'all checks', status, message))
            if status == 200:
                os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
                with open(marker, 'w', encoding='ascii') as handle:
                    handle.write('%d\n' % time.time())
        sample = {'kind': 'health', 'health': health(args.proc), 'gpu': gpu_metrics()}
        status, message = post(env, sample)
        if status != 200:
            log('health sample not stored: %s %s' % (status, message))
        if args.once:
            return 0 if status == 200 else 1
        time.sleep(args.interval)


if __name__ == '__main__':
    sys.exit(main())
