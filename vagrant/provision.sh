#!/bin/bash
# Make this machine a Tartan node, as an operator would: the bundle installed by Tartan's own
# installer (what `make install` runs), etcd on the first node, and tartand as the systemd
# unit the installer puts there, with a drop-in for this cluster. Run as root; safe to run
# again. The Vagrantfile and the VM lab (vagrant/vmlab) both run it.
#
#   provision.sh --node-ip IP --etcd-ip IP [--backend vxlan|host-gw|directrouting]
#                [--bundle DIR --source DIR] [--network CIDR]
#
# --bundle and --source (the bundle, dist/tartan, and the source tree holding
# packaging/install.py) install or upgrade Tartan; without them it must be installed already.
# The node whose --node-ip is --etcd-ip runs etcd (installed from Debian when missing).
set -euo pipefail

node_ip="" etcd_ip="" backend="vxlan" bundle="" source="" network="10.244.0.0/16"
while [ $# -gt 0 ]; do
	case "$1" in
	--node-ip) node_ip="$2"; shift 2 ;;
	--etcd-ip) etcd_ip="$2"; shift 2 ;;
	--backend) backend="$2"; shift 2 ;;
	--bundle) bundle="$2"; shift 2 ;;
	--source) source="$2"; shift 2 ;;
	--network) network="$2"; shift 2 ;;
	*) echo "provision.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
say() { echo "tartan provision ($(hostname)): $*"; }
fail() { echo "provision.sh: $*" >&2; exit 2; }

[ -n "$node_ip" ] && [ -n "$etcd_ip" ] || fail "--node-ip and --etcd-ip are required"
case "$backend" in
vxlan) backend_json='{"Type": "vxlan"}' ;;
host-gw) backend_json='{"Type": "host-gw"}' ;;
directrouting) backend_json='{"Type": "vxlan", "DirectRouting": true}' ;;
*) fail "--backend $backend: use vxlan, host-gw or directrouting" ;;
esac
iface=$(ip -o -4 addr show | awk -v ip="$node_ip" '{split($4, a, "/"); if (a[1] == ip) print $2}')
[ -n "$iface" ] || fail "no interface here has $node_ip"

# 1. what the bundle runs (a plain box may lack iptables and ipset), and the kernel modules
#    tartand and NetworkPolicy need, now and at every boot
missing=""
for tool in iptables:iptables ipset:ipset ip:iproute2; do
	command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
	say "installing$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
printf 'vxlan\nbridge\nbr_netfilter\n' >/etc/modules-load.d/tartan.conf
for module in vxlan bridge br_netfilter; do modprobe "$module" || true; done

# 2. the bundle
if [ -n "$bundle" ]; then
	[ -n "$source" ] || fail "--bundle needs --source (the tree with packaging/install.py)"
	say "installing the bundle from $bundle"
	python3 "$source/packaging/install.py" install --bundle "$bundle"
fi
[ -x /usr/local/bin/tartand ] || fail "Tartan is not installed: give --bundle and --source"

# 3. etcd, on its node
if [ "$node_ip" = "$etcd_ip" ]; then
	if ! command -v etcd >/dev/null; then
		say "installing etcd-server"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
	fi
	cat >/etc/default/etcd <<-EOF
		ETCD_NAME="$(hostname)"
		ETCD_DATA_DIR="/var/lib/etcd/tartan"
		ETCD_LISTEN_CLIENT_URLS="http://$etcd_ip:2379,http://127.0.0.1:2379"
		ETCD_ADVERTISE_CLIENT_URLS="http://$etcd_ip:2379"
		ETCD_LISTEN_PEER_URLS="http://127.0.0.1:2380"
		ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:2380"
		ETCD_INITIAL_CLUSTER="$(hostname)=http://127.0.0.1:2380"
	EOF
	systemctl enable etcd >/dev/null 2>&1 || true
	systemctl restart etcd
	say "etcd on $etcd_ip:2379"
fi

# 4. tartand: the installed unit, with this cluster's flags in a drop-in
mkdir -p /etc/tartan /etc/systemd/system/tartand.service.d
printf '{"Network": "%s", "Backend": %s}\n' "$network" "$backend_json" >/etc/tartan/net-conf.json
cat >/etc/systemd/system/tartand.service.d/10-cluster.conf <<EOF
[Service]
ExecStart=
ExecStart=/usr/local/bin/tartand --ip-masq --store etcd --etcd-endpoints http://$etcd_ip:2379 --iface $iface --public-ip $node_ip --net-config /etc/tartan/net-conf.json --node-name $(hostname)
EOF
systemctl daemon-reload
systemctl enable tartand >/dev/null 2>&1
systemctl restart tartand
# ready: the subnet file written and /readyz answering 200 (bash's /dev/tcp: polling with
# tartanctl would start a Python program every half second)
ready() {
	[ -s /run/tartan/subnet.env ] || return 1
	exec 3<>/dev/tcp/127.0.0.1/9808 || return 1
	printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
	local status
	read -r _ status _ <&3
	exec 3>&-
	[ "$status" = 200 ]
}
for _ in $(seq 1 240); do
	if ready 2>/dev/null; then
		say "tartand ready: $(grep FLANNEL_SUBNET /run/tartan/subnet.env)"
		exit 0
	fi
	sleep 0.5
done
journalctl -u tartand --no-pager -n 30 >&2 || true
fail "tartand did not become ready in 120 s"
