#!/usr/bin/env bash
# The container image's final stage, checked without a Docker engine.
#
# The Dockerfile's final stage is gcr.io/distroless/cc-debian12:nonroot plus
# the binary and an empty working directory owned by 65532. distroless builds
# that base from Debian 12 packages (its static, base and cc images:
# base-files, netbase, tzdata, media-types, the CA bundle, libc6, libssl3,
# libgcc-s1, libgomp1, libstdc++6, gcc-12-base). This script lays out the
# same files from the same packages (apt-get download, Debian 12 host), adds
# the binary as the Dockerfile does, and then, as user 65532 in a chroot with
# the Dockerfile's working directory:
#   - runs `canary-gateway --version` (every shared library it needs is there);
#   - runs `canary-gateway run` with the whole config in CANARY_GATEWAY_CONFIG
#     (the state file lands in the working directory), in front of
#     `canary-gateway demo` started outside as the upstream;
#   - runs `canary-gateway health` as the HEALTHCHECK does (exit 0), sends a
#     request through (200), and sets weights with `canary-gateway ctl`
#     (the state file is written in the working directory);
#   - prints the size of each layer, uncompressed (what `docker image ls`
#     adds up) and gzip-compressed (what a registry stores).
#
# Usage (root, for chroot): deploy/check-image-filesystem.sh [BINARY]
# BINARY defaults to target/release/canary-gateway (cargo build --release).
set -euo pipefail

binary=$(realpath "${1:-target/release/canary-gateway}")
[ -x "$binary" ] || { echo "no binary at $binary: cargo build --release first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (chroot)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

packages=(base-files netbase tzdata media-types libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 gcc-12-base)
apt-get download "${packages[@]}" >/dev/null 2>&1
mkdir -p base app/usr/local/bin app/var/lib/canary-gateway
for deb in *.deb; do dpkg-deb -x "$deb" base; done
mkdir -p base/etc/ssl/certs base/tmp base/home/nonroot
chmod 1777 base/tmp
cp /etc/ssl/certs/ca-certificates.crt base/etc/ssl/certs/
cp "$binary" app/usr/local/bin/canary-gateway
chown 65532:65532 app/var/lib/canary-gateway
tar -C base -cf base.tar . && tar -C app -cf app.tar .
gzip -k -6 base.tar app.tar
mkdir root && cp -a base/. root/ && cp -a app/. root/

# Replaces the calling (sub)shell with a command run as the image runs it:
# user 65532, working directory /var/lib/canary-gateway. Call it as
# `(image_exec ...)`, or `image_exec ... &` (then $! is the command).
image_exec() {
    exec python3 - "$work/root" "$@" <<'PY'
import os, sys
root, argv = sys.argv[1], sys.argv[2:]
os.chroot(root)
os.chdir("/var/lib/canary-gateway")
os.setgroups([])
os.setgid(65532)
os.setuid(65532)
os.execve(argv[0], argv, dict(os.environ))
PY
}

wait_for() {
    for _ in $(seq 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

echo "version in the image: $(image_exec /usr/local/bin/canary-gateway --version)"

"$binary" demo --listen 127.0.0.1:29080 --admin 127.0.0.1:29901 >demo.log 2>&1 &
pids+=($!)
wait_for 29080

CANARY_GATEWAY_CONFIG='
[listener]
address = "127.0.0.1:29180"
[admin]
address = "127.0.0.1:29191"
[split]
stable = "v1"
[[versions]]
name = "v1"
weight = 100
endpoints = ["127.0.0.1:29080"]
' image_exec /usr/local/bin/canary-gateway run >run.log 2>&1 &
pids+=($!)
wait_for 29180

if (CANARY_ADMIN_URL=http://127.0.0.1:29191 image_exec /usr/local/bin/canary-gateway health); then
    echo "health in the image: exit 0"
else
    echo "health in the image failed" >&2; cat run.log >&2; exit 1
fi
status=$(python3 -c "
import http.client
c = http.client.HTTPConnection('127.0.0.1', 29180, timeout=5)
c.request('GET', '/')
print(c.getresponse().status)")
[ "$status" = 200 ] || { echo "request through the image's gateway: $status" >&2; exit 1; }
echo "request through the image's gateway: $status"
# A decision is written to the state file, in the working directory.
(CANARY_ADMIN_URL=http://127.0.0.1:29191 image_exec /usr/local/bin/canary-gateway ctl weights set v1=100) >/dev/null || { cat run.log >&2; exit 1; }
[ -s root/var/lib/canary-gateway/gateway.state.json ] || { echo "no state file in the working directory" >&2; exit 1; }
echo "state file written by 65532: /var/lib/canary-gateway/gateway.state.json"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
size() { stat -c %s "$1"; }
echo "layers (uncompressed / gzip):"
echo "  distroless cc-debian12 packages: $(mib "$(size base.tar)") / $(mib "$(size base.tar.gz)")"
echo "  canary-gateway:                  $(mib "$(size app.tar)") / $(mib "$(size app.tar.gz)")"
echo "  image:                           $(mib $(($(size base.tar) + $(size app.tar)))) / $(mib $(($(size base.tar.gz) + $(size app.tar.gz))))"
