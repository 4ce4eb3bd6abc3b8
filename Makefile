# Tartan. `make demo` and `make test` set up everything they need on a fresh Debian 12
# machine (run as root) and are safe to run again.

SHELL := /bin/bash
# Debian's own interpreter, not whichever python3 is first on the PATH (a pyenv build, say):
# Debian builds it with PGO and LTO, and the bundle carries its libpython, so every plugin
# start and the agent's work run on the faster build (measured in bench/reports/cni_latency.md).
PYTHON_BASE ?= $(firstword $(wildcard /usr/bin/python3.11) $(shell command -v python3))
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .make

# Debian packages the plugins, the tests and the demo use.
APT_PACKAGES := iproute2 iptables ipset iputils-ping podman runc \
	containernetworking-plugins busybox-static tcpdump conntrack etcd-server iperf3 \
	python3 python3-venv libpython3.11 util-linux strace tshark ethtool \
	qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client vagrant containerd

PACKAGES := kernel cni ipam netpol backends debug
SOURCES := $(shell find $(PACKAGES) -name '*.py' 2>/dev/null) pyproject.toml

.PHONY: all deps apt venv demo vm-lab test test-vagrant unit lint bench bench-dataplane bench-netpol bench-capture bench-vm bench-scale bench-cri \
	clean bundle image \
	install uninstall

all: venv

deps: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	"$(PYTHON_BASE)" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "pyroute2>=0.9.7,<0.10" "etcd3>=0.12,<0.13" "prometheus-client>=0.20" \
		"pyyaml>=6,<7" "scapy>=2.5,<3" "pytest>=8" "ruff>=0.6" "mypy==2.4.1" "import-linter==2.17" \
		"types-PyYAML" "kubernetes>=31,<38"
	@touch $@

# The project itself is installed (not editable), so the tests run the same console
# scripts an operator gets.
$(STAMPS)/install: $(STAMPS)/venv $(SOURCES)
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	@rm -rf build *.egg-info
	@touch $@

venv: $(STAMPS)/install

# ruff; mypy over the product code, named as installed (build/typecheck/tartan/ links to the
# source folders); the layer contracts of pyproject.toml over the installed package.
lint: venv
	$(VENV)/bin/ruff check .
	@rm -rf build/typecheck && mkdir -p build/typecheck/tartan
	@for p in $(PACKAGES); do ln -s ../../../$$p build/typecheck/tartan/$$p; done
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p tartan
	cd vagrant && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p vmlab
	$(VENV)/bin/lint-imports --config pyproject.toml

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# The VM suite spends its time in qemu's emulation; it runs beside the rest of the suite (its
# VMs live in a namespace of their own), niced so that the rest keeps the CPU it waits on,
# and its report follows the rest's.
test: deps lint bundle
	@mkdir -p $(STAMPS)
	@nice -n 5 $(VENV)/bin/pytest -q -rs -p no:cacheprovider tests/vm > $(STAMPS)/vm-tests.log 2>&1 & \
	vm=$$!; \
	$(VENV)/bin/pytest -q -rs --ignore=tests/vm --ignore=tests/vagrant tests; rest=$$?; \
	wait $$vm; vmrc=$$?; \
	echo "---- tests/vm (ran beside the rest)"; cat $(STAMPS)/vm-tests.log; \
	exit $$(( rest != 0 ? rest : vmrc ))

# Opt-in, not in `make test`: a real `vagrant up` of vagrant/Vagrantfile (2 nodes) through
# vagrant-libvirt, from a Debian 12 box built here, its checks, `vagrant destroy`. libvirtd
# runs for it in a namespace of its own and is stopped afterwards.
VAGRANT_APT_PACKAGES := vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base rsync

test-vagrant: deps bundle
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(VAGRANT_APT_PACKAGES)"
	$(VENV)/bin/pytest -q -rs -s -p no:cacheprovider tests/vagrant

# --- The bundle (packaging/): one PyInstaller onedir, dist/tartan/, rebuilt only when the
# sources or the packaging change. `make install` / `make uninstall` as root; DESTDIR= stages.
PYINSTALLER := pyinstaller==6.22.3 pyinstaller-hooks-contrib==2026.9
BUNDLE := dist/tartan/tartan-full
BUNDLE_INPUTS := $(addprefix packaging/,tartan.spec cni_modules.py entry_cni.py entry_full.py)
DESTDIR ?=

$(STAMPS)/pyinstaller: $(STAMPS)/venv
	$(PY) -m pip install -q $(PYINSTALLER)
	@touch $@

$(BUNDLE): $(STAMPS)/install $(STAMPS)/pyinstaller $(BUNDLE_INPUTS)
	rm -rf dist/tartan build/pyinstaller
	$(PY) -m PyInstaller --noconfirm --log-level WARN --distpath dist \
		--workpath build/pyinstaller packaging/tartan.spec
	@touch $@

bundle: $(BUNDLE)

# The DaemonSet's image (packaging/kubernetes/kube-tartan.yml) from the bundle.
IMAGE ?= localhost/tartan:0.1.0

image: $(BUNDLE)
	podman build -f packaging/kubernetes/Containerfile \
		--ignorefile packaging/kubernetes/containerignore -t $(IMAGE) .

install: $(BUNDLE)
	"$(PYTHON_BASE)" packaging/install.py install --bundle dist/tartan --destdir "$(DESTDIR)"

uninstall:
	"$(PYTHON_BASE)" packaging/install.py uninstall --destdir "$(DESTDIR)"

# Three nodes in namespaces, leases, the full pod ping matrix, and always `down`.
demo: deps
	$(VENV)/bin/tartanctl lab demo --nodes 3 --backend vxlan --store sqlite

# Three Debian 12 VMs under qemu (their own 6.1 kernel) provisioned as the Vagrantfile
# provisions its nodes, pods on each, the cross-VM ping matrix, and always `down`.
vm-lab: deps bundle
	cd vagrant && ../$(PY) -m vmlab demo --nodes 3 --backend vxlan

bench: deps bundle
	$(PY) bench/cni_latency.py --pairs 30 --impl tartan-agent,reference,tartan-bundle-fallback --meta \
		--report bench/reports/cni_latency.md
	$(PY) bench/cni_latency.py --pairs 30 --impl tartan-agent,reference --agent tartand \
		--report bench/reports/cni_latency_tartand.md
	$(PY) bench/cni_latency.py --pairs 0 --impl tartan-agent,reference --concurrency 50 \
		--rounds 3 --memory 1000 --report bench/reports/cni_load.md

bench-dataplane: deps
	$(PY) bench/dataplane.py --seconds 5 --rounds 5 --report bench/reports/dataplane.md

bench-netpol: deps
	$(PY) bench/netpol.py --report bench/reports/netpol.md

bench-capture: deps
	$(PY) bench/capture.py --report bench/reports/capture.md

bench-scale: deps bundle
	$(PY) bench/scale.py --report bench/reports/scale.md

# containerd's CRI: RunPodSandbox and Stop+Remove on Tartan (the bundle, tartand up) against
# the reference plugins under one containerd, in a node namespace of the bench's own.
bench-cri: deps bundle
	$(PY) bench/cri.py --pods 20 --report bench/reports/cri.md

bench-vm: deps bundle
	$(PY) bench/vm.py --report bench/reports/vm.md

clean:
	rm -rf $(VENV) $(STAMPS) build dist *.egg-info
