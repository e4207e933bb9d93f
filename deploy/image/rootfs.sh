#!/bin/sh
# Assemble the runtime root filesystem of the regmirror image from a built binary, as OUTDIR/rootfs
# (owned by root) and OUTDIR/data (the empty data directory, copied with --chown=10001:10001 to
# /var/lib/regmirror: COPY makes everything else root's):
#   /usr/local/bin/regmirror      the binary, stripped
#   its shared libraries          exactly what `ldd` lists (glibc's loader, libc, libm, libgcc_s)
#   /etc/ssl/certs/ca-certificates.crt   the CA bundle for https upstreams
#   /etc/passwd, /etc/group       root and the non-root user regmirror (10001:10001)
#   /tmp                          sticky, world-writable (unused by regmirror; for tools run inside)
# Used by the root Dockerfile's build stage and by tests/e2e_image.rs, so that the image users build
# and the image CI runs have the same contents. POSIX sh; needs ldd, strip (binutils) and a CA bundle.
#
#   deploy/image/rootfs.sh BINARY OUTDIR     (replaces OUTDIR/rootfs and OUTDIR/data)
set -eu
bin=$1
top=$2
out=$top/rootfs
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }
[ -f "$ca" ] || { echo "rootfs.sh: no CA bundle at $ca (install ca-certificates or set CA_BUNDLE)" >&2; exit 1; }
rm -rf "$top/rootfs" "$top/data"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/var/lib" "$out/tmp" "$top/data"
if command -v strip >/dev/null 2>&1; then
    strip -o "$out/usr/local/bin/regmirror" "$bin"
else
    cp "$bin" "$out/usr/local/bin/regmirror"
fi
# Each library at the path the loader looks for it (its real file, not the symlink).
ldd "$bin" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
cp -L "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nregmirror:x:10001:10001:regmirror:/var/lib/regmirror:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nregmirror:x:10001:\n' >"$out/etc/group"
chmod 0750 "$top/data"
chmod 1777 "$out/tmp"
