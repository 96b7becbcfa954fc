#!/usr/bin/env bash
# Debian packages that flowwarden's tests and tools use (capture, firewall, real peers).
set -euo pipefail
pkgs=(tshark tcpdump nftables libnftables1 iproute2 iputils-ping nmap dnsmasq-base dnsutils curl
      prometheus prometheus-alertmanager docker-compose chromium procps postgresql-client make
      hydra iodine openssh-server net-tools openssl)  # the lab (tests/lab): hydra vs sshd, iodine (uses ifconfig)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  # The daemons among these (sshd, dnsmasq) run only inside the tests' network namespaces:
  # keep the packages from starting them on the host (policy-rc.d 101 = "not allowed").
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
  fi
  status=0
  apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
  exit "$status"
fi
