#!/usr/bin/env bash
# Build a local stand-in for the `debian:bookworm-slim` base image and load it into podman.
#
# Only for machines that reach a Debian package mirror but no image registry (docker.io).
# scripts/docker-test.sh calls it when the base image cannot be pulled; where a registry is
# reachable the real image is used and this script never runs.
#
# It runs debootstrap (minbase variant) against the mirror that apt already uses, trims it the
# way the official slim image is trimmed (no docs, man pages or locales, empty apt lists), and
# imports the tree with `podman import` as docker.io/library/debian:bookworm-slim.
#
# Usage: scripts/local-base-image.sh [--force]
# Env:   MIRROR   Debian mirror URL (default: the first one in /etc/apt/sources.list*, else
#                 http://deb.debian.org/debian)
#        ENGINE   container engine to import into (default: podman)
set -euo pipefail

IMAGE=docker.io/library/debian:bookworm-slim
SUITE=bookworm
ENGINE=${ENGINE:-podman}
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

die() { echo "local-base-image: $*" >&2; exit 1; }

if [[ $FORCE -eq 0 ]] && $ENGINE image exists "$IMAGE" 2>/dev/null; then
    echo "local-base-image: $IMAGE already present (use --force to rebuild)"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root; run as root"
if ! command -v debootstrap >/dev/null; then
    apt-get update -q && apt-get install -y -q --no-install-recommends debootstrap
fi

# The mirror apt is configured with on this machine (deb822 "URIs:" or one-line "deb URL ...").
detect_mirror() {
    local f url
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        url=$(awk '/^URIs:/ {print $2; exit} /^deb / && $0 !~ /\[/ {print $2; exit}' "$f")
        if [[ -n $url && $url == */debian ]]; then echo "$url"; return; fi
    done
    echo http://deb.debian.org/debian
}
MIRROR=${MIRROR:-$(detect_mirror)}

ROOT=$(mktemp -d /var/tmp/bookworm-slim.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

echo "local-base-image: debootstrap $SUITE from $MIRROR into $ROOT"
debootstrap --variant=minbase --arch=amd64 "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
    || { tail -20 "$ROOT.log" >&2; die "debootstrap failed (log: $ROOT.log)"; }
rm -f "$ROOT.log"

# Trim as the official slim image does, and keep later apt installs trimmed too.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin \
    "$ROOT"/var/log/*.log
# Container apt settings, as in the official image: no package caches left behind after an
# install (the .debs and the ~70 MB *.bin caches), no translations, no services started.
cat >"$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$ROOT/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$ROOT/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$ROOT/etc/apt/apt.conf.d/docker-autoremove-suggests"
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# Same sources as the official image (deb822, main, with updates and security).
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

echo "local-base-image: importing as $IMAGE"
tar -C "$ROOT" --numeric-owner -c . | $ENGINE import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$IMAGE" >/dev/null
$ENGINE image ls "$IMAGE"
