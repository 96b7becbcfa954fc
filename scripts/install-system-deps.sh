#!/usr/bin/env bash
# Debian packages that flowwarden's tests and tools use (capture, firewall, real peers).
set -euo pipefail
pkgs=(tshark tcpdump nftables libnftables1 iproute2 iputils-ping nmap dnsmasq-base dnsutils curl
      prometheus prometheus-alertmanager docker-compose chromium procps postgresql-client make)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
