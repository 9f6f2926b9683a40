# outwatch: every set-up step a fresh Debian machine needs lives here (make install is idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool bpftrace python3-venv \
	iproute2 ufw nftables iptables rsyslog logrotate systemd socat jq gcc libc6-dev make procps
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done
STAMP_HEADERS := $(VENV)/.headers-$(shell uname -r)

.PHONY: install run test lint bench clean

install: $(STAMP_HEADERS)

# headers BCC can compile against (a fallback tree when this kernel has no package): once per kernel
$(STAMP_HEADERS): $(STAMP_PIP)
	@$(PY) -m outwatch.kernel.headers --setup
	@touch $@

$(STAMP_APT):
	@if [ "$$(id -u)" != 0 ]; then echo "make install needs root (apt packages, BPF): run it with sudo" >&2; exit 1; fi
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -x $(VENV)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

run: install
	@$(VENV)/bin/outwatch watch

test: install
	@$(VENV)/bin/ruff check src tests bench
	@$(PY) -m pytest -q tests

lint: install
	@$(VENV)/bin/ruff check src tests bench

bench: install
	@$(PY) -m pip install -q --disable-pip-version-check 'py-spy>=0.4'
	@$(PY) bench/run.py

clean:
	rm -rf $(VENV) bench/build
