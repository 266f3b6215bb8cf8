# The two commands of the README: `make lab` and `make test`. Everything else is a piece of them.
VENV ?= .venv
SETUP := hack/setup.sh $(VENV)

.PHONY: help setup lab lab-up lab-down lab-fleet kernel-lab test units sanity lint molecule packaging docs docs-check bench clean

help:
	@echo "make lab    - set everything up and run the local lab: host_prep, discover, allocate two slots"
	@echo "              (test guests under TCG), prove their network isolation, release them, report"
	@echo "make lab-up / lab-down - the lab's two allocations left running / torn down"
	@echo "make lab-fleet - the playbooks over SSH (non-root user, become) against two nodes: this machine"
	@echo "              and a Debian VM with its own kernel (TCG); one slot allocated on each, then the control"
	@echo "              plane over both with the VM stopped mid-job; report per node"
	@echo "make test   - set everything up and run the whole test suite (what CI runs)"
	@echo "make kernel-lab - boot the real-kernel lab (QEMU, emulated IOMMU) and run tests/kernel_lab in it,"
	@echo "              then boot it into systemd and run host_prep's units there"
	@echo "make units | sanity | lint | molecule | packaging | docs-check - one part of the suite"
	@echo "make docs   - regenerate docs/modules/ from the modules' DOCUMENTATION"
	@echo "make bench  - run the benchmarks under bench/"

setup:
	@$(SETUP)

lab: setup
	@hack/lab.sh $(VENV) run

lab-up: setup
	@hack/lab.sh $(VENV) up

lab-down: setup
	@hack/lab.sh $(VENV) down

# Not part of make test: the node VM boots under TCG and its slot VM under TCG inside it.
lab-fleet: setup
	@export PATH="$(abspath $(VENV))/bin:$$PATH"; $(VENV)/bin/python lab/fleet/fleet_lab.py run --control-plane

# Two boots: the device tests in a chroot of the host's tree, then host_prep's units under
# systemd as PID 1. Both run; either failing fails the target.
kernel-lab: setup
	@rc=0; $(VENV)/bin/python lab/kernel/kernel_lab.py run || rc=1; \
	  $(VENV)/bin/python lab/kernel/kernel_lab.py run --systemd || rc=1; exit $$rc

test: setup
	@hack/test.sh $(VENV)

units: setup
	@hack/test.sh $(VENV) units

sanity: setup
	@hack/test.sh $(VENV) sanity

lint: setup
	@hack/test.sh $(VENV) lint

molecule: setup
	@hack/test.sh $(VENV) molecule

packaging: setup
	@hack/test.sh $(VENV) packaging

docs-check: setup
	@hack/test.sh $(VENV) docs

docs: setup
	@$(VENV)/bin/python hack/module_docs.py write

# The benchmarks run the venv's tools (ansible-playbook through ansible-runner, gpuaas): put
# them first on PATH, as the suite does, so a fresh machine needs nothing else installed.
bench: setup
	@export PATH="$(abspath $(VENV))/bin:$$PATH"; \
	  for b in bench/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf .build tests/output
