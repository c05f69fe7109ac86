#!/usr/bin/env bash
# The root file system of the Dockerfile's runtime stage, for machines without a container
# engine: `FROM debian:bookworm-slim` becomes a debootstrap'd Debian bookworm (minbase), and the
# stage's RUN lines (its apt-get install line, the user, the directories) run inside it with
# chroot, exactly as written. COPY, ENV, USER, WORKDIR, ENTRYPOINT and CMD are applied at run
# time by the test that starts the image (tests/ship.rs), so the binary and configuration are
# always the current ones.
# Cached by the stage's text under $CAL_RELAY_ROOTFS_CACHE (default /var/cache/cal-relay);
# prints the root file system's path. Needs root (debootstrap, chroot, mount).
# Usage: scripts/image-rootfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CAL_RELAY_ROOTFS_CACHE:-/var/cache/cal-relay}

# The runtime stage: everything after the last FROM, continuation lines joined.
stage=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' Dockerfile)
base=$(printf '%s' "$stage" | awk '/^FROM /{print $2; exit}')
case "$base" in
  debian:bookworm-slim | debian:bookworm) suite=bookworm ;;
  *) echo "image-rootfs: runtime stage FROM $base is not a Debian bookworm image" >&2; exit 2 ;;
esac
runs=$(printf '%s' "$stage" | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | sed -n 's/^RUN[[:space:]]\+//p')
key=$(printf '%s\n%s\n' "$suite" "$runs" | sha256sum | cut -c1-16)
root="$CACHE/rootfs-$suite-$key"
if [ -x "$root/usr/bin/env" ] && [ -f "$root/.cal-relay-ready" ]; then
  echo "$root"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq debootstrap >/dev/null
}
mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "== image-rootfs: debootstrap $suite into $tmp" >&2
debootstrap --variant=minbase "$suite" "$tmp/root" http://deb.debian.org/debian >"$tmp/debootstrap.log" 2>&1 \
  || { tail -30 "$tmp/debootstrap.log" >&2; exit 1; }
cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
# Each RUN line as the image build runs it: /bin/sh -c, as root, in a private mount namespace
# with /proc and /dev.
while IFS= read -r cmd; do
  [ -n "$cmd" ] || continue
  echo "== image-rootfs: RUN $cmd" >&2
  unshare --mount --fork --propagation private bash -c '
    set -e
    mount -t proc proc "$1/proc"
    mount --bind /dev "$1/dev"
    DEBIAN_FRONTEND=noninteractive chroot "$1" /bin/sh -c "$2"
  ' _ "$tmp/root" "$cmd" >"$tmp/run.log" 2>&1 || { tail -30 "$tmp/run.log" >&2; exit 1; }
done <<< "$runs"
touch "$tmp/root/.cal-relay-ready"
rm -rf "$root"
mv "$tmp/root" "$root"
echo "$root"
