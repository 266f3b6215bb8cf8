#!/usr/bin/env bash
# The host operations of one allocate (or release) done by a plain shell script, for
# bench/bench_allocate.py to compare with the playbooks. No checks beyond what a careful
# script would do; no idempotence, no check mode, no diff, no crash safety.
# Usage: allocate_plain.sh allocate|release   (everything else comes from the environment)
set -euo pipefail
: "${SLOT:?}" "${ALLOC:?}" "${MAC:?}" "${IP:?}" "${TAP:?}" "${OFPORT:?}" "${COOKIE:?}"
state=/var/lib/gpuaas
lease=$state/node-scheduler/leases/$SLOT.json
bridge=br-gpuaas
of=(ovs-ofctl -O OpenFlow15)

if [ "$1" = allocate ]; then
  : "${IMAGE:?}" "${CHECKSUM:?}" "${KERNEL:?}" "${INITRD:?}" "${PUBKEY:?}"
  exec 9>"$state/node-scheduler/leases/.$SLOT.lock"
  flock 9
  [ -e "$lease" ] && { echo "slot $SLOT is held" >&2; exit 1; }
  printf '{"slot_id": "%s", "allocation_id": "%s", "phase": "provisioning"}\n' "$SLOT" "$ALLOC" > "$lease.tmp"
  mv "$lease.tmp" "$lease"
  token=$(head -c 32 /dev/urandom | base64 | tr -d '=+/\n')
  printf '{"allocation_id": "%s", "slot_id": "%s", "ip": "%s", "token": "%s"}\n' "$ALLOC" "$SLOT" "$IP" "$token" \
    > "$state/telemetry/tokens/$SLOT.json"
  chmod 600 "$state/telemetry/tokens/$SLOT.json"
  echo "$MAC,$IP,plain-slot" > "$state/network/dhcp-hosts.d/$SLOT"
  ip tuntap add dev "$TAP" mode tap
  ovs-vsctl add-port $bridge "$TAP" -- set Interface "$TAP" ofport_request="$OFPORT" external_ids:gpuaas-slot="$SLOT"
  ip link set "$TAP" up
  c="cookie=$COOKIE"; src="in_port=$OFPORT,dl_src=$MAC"
  "${of[@]}" add-flows $bridge - <<FLOWS
$c,priority=200,arp,$src,arp_spa=$IP,arp_sha=$MAC,arp_tpa=10.100.0.1 actions=LOCAL
$c,priority=200,udp,$src,nw_src=0.0.0.0,nw_dst=255.255.255.255,tp_src=68,tp_dst=67 actions=LOCAL
$c,priority=200,udp,$src,nw_src=$IP,tp_src=68,tp_dst=67 actions=LOCAL
$c,priority=200,icmp,$src,nw_src=$IP,nw_dst=10.100.0.1 actions=LOCAL
$c,priority=200,tcp,$src,nw_src=$IP,nw_dst=10.100.0.1,tp_dst=9110 actions=LOCAL
$c,priority=190,ip,$src,nw_src=$IP,nw_dst=10.100.0.0/24 actions=drop
$c,priority=180,ip,$src,nw_src=$IP actions=LOCAL
$c,priority=200,in_port=LOCAL,dl_dst=$MAC actions=output:$OFPORT
$c,priority=200,arp,in_port=LOCAL,dl_dst=ff:ff:ff:ff:ff:ff,arp_tpa=$IP actions=output:$OFPORT
FLOWS
  "${of[@]}" insert-buckets $bridge "group_id=6778997,command_bucket_id=last,bucket=bucket_id:$OFPORT,actions=output:$OFPORT"
  echo "${CHECKSUM#sha256:}  $IMAGE" | sha256sum -c --quiet
  disk=$state/disks/$SLOT.raw
  qemu-img convert -f qcow2 -O raw "$IMAGE" "$disk"
  qemu-img resize -q -f raw "$disk" 1G
  seed=$(mktemp -d)
  # JSON, one key per line (valid YAML, and what the test guest's init reads).
  printf '{\n  "instance-id": "%s",\n  "local-hostname": "plain-slot"\n}\n' "$ALLOC" > "$seed/meta-data"
  printf '#cloud-config\n{\n  "ssh_authorized_keys": [\n    "%s"\n  ]\n}\n' "$PUBKEY" > "$seed/user-data"
  printf '{\n  "version": 2,\n  "ethernets": {\n    "slot0": {\n      "match": {\n        "macaddress": "%s"\n      },\n      "dhcp4": true\n    }\n  }\n}\n' \
    "$MAC" > "$seed/network-config"
  genisoimage -quiet -o "$state/seeds/$SLOT-seed.iso" -V cidata -J -R "$seed"
  rm -rf "$seed"
  xml=$(mktemp)
  cat > "$xml" <<XML
<domain type='qemu'>
  <name>gpuaas-$SLOT</name>
  <memory unit='MiB'>256</memory>
  <vcpu placement='static' cpuset='0'>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KERNEL</kernel><initrd>$INITRD</initrd>
    <cmdline>${CMDLINE:-console=ttyS0}</cmdline></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$disk'/><target dev='vda' bus='virtio'/></disk>
    <controller type='scsi' model='virtio-scsi'/>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$state/seeds/$SLOT-seed.iso'/><target dev='sda' bus='scsi'/><readonly/></disk>
    <interface type='ethernet'><mac address='$MAC'/><target dev='$TAP' managed='no'/><model type='virtio'/><rom enabled='no'/></interface>
    <serial type='pty'><log file='/var/log/gpuaas/console/$SLOT.log' append='off'/></serial>
  </devices>
</domain>
XML
  virsh -q -c qemu:///system define "$xml" >/dev/null
  rm -f "$xml"
  virsh -q -c qemu:///system start "gpuaas-$SLOT" >/dev/null
  until grep -q " $MAC $IP " "$state/network/dnsmasq.leases" 2>/dev/null; do sleep 0.1; done
  printf '{"slot_id": "%s", "allocation_id": "%s", "phase": "running"}\n' "$SLOT" "$ALLOC" > "$lease.tmp"
  mv "$lease.tmp" "$lease"
else
  virsh -q -c qemu:///system destroy "gpuaas-$SLOT" >/dev/null 2>&1 || true
  virsh -q -c qemu:///system undefine --nvram "gpuaas-$SLOT" >/dev/null
  "${of[@]}" del-flows $bridge "cookie=$COOKIE/-1"
  "${of[@]}" remove-buckets $bridge "group_id=6778997,command_bucket_id=$OFPORT"
  ovs-vsctl --if-exists del-port $bridge "$TAP"
  ip tuntap del dev "$TAP" mode tap
  rm -f "$state/network/dhcp-hosts.d/$SLOT" "$state/telemetry/tokens/$SLOT.json" \
        "$state/seeds/$SLOT-seed.iso" "$state/disks/$SLOT.raw"
  rm -f "$lease"
fi
