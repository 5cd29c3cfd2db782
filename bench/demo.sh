#!/usr/bin/env bash
# make demo: a pool under the repo, an LU mounted through FUSE, data written and read back,
# figures printed, a clean unmount. Run from the repository root after `make venv deps`.
set -euo pipefail
BS=${BS:-.venv/bin/blockstore}
POOL=demo-pool
MNT=demo-mnt
DATA=$POOL.data

cleanup() {
  if mountpoint -q "$MNT" 2>/dev/null; then "$BS" umount "$MNT" || true; fi
  rm -f "$DATA"
}
trap cleanup EXIT
cleanup
rm -rf "$POOL" "$MNT"
mkdir -p "$MNT"

step() { printf '\n== %s\n' "$*"; }
step "a 4 GiB thin pool and a 1 GiB LU"
"$BS" --pool "$POOL" pool create --size 4G
"$BS" --pool "$POOL" lu create disk0 --size 1G

step "mount it: every LU is a file"
"$BS" --pool "$POOL" mount "$MNT"
ls -l "$MNT"

step "write 256 MiB of random data through the mount (dd, fsync), read it back"
head -c 256M /dev/urandom > "$DATA"
dd if="$DATA" of="$MNT/disk0" bs=1M conv=notrunc,fsync 2>&1 | tail -1
echo "rewrite in place (the extents are the LU's own now: served in C, without Python):"
dd if="$DATA" of="$MNT/disk0" bs=1M conv=notrunc oflag=direct 2>&1 | tail -1
dd if="$MNT/disk0" of=/dev/null bs=1M count=256 iflag=direct 2>&1 | tail -1
cmp "$DATA" <(head -c 256M "$MNT/disk0") && echo "read back through the mount: identical"
echo "allocated on the pool (du): $(du -h "$MNT/disk0" | cut -f1) of $(ls -lh "$MNT/disk0" | awk '{print $5}')"
df -h "$MNT" | tail -1

step "unmount (flushes everything), then snapshot and clone: both O(1)"
"$BS" umount "$MNT"
grep -h "requests:" "$POOL"/mounts/*.log | tail -1 | sed 's/.*requests:/requests the mount served:/'
"$BS" --pool "$POOL" lu snapshot disk0 s1
"$BS" --pool "$POOL" lu clone disk0@s1 disk1
"$BS" --pool "$POOL" lu read disk1 --length 256M | cmp - "$DATA" && echo "the clone holds the same bytes"
"$BS" --pool "$POOL" lu list
"$BS" --pool "$POOL" pool status
"$BS" --pool "$POOL" pool check
step "a mirrored LU: a byte of its primary copy damaged on disk, found and repaired by scrub"
"$BS" --pool "$POOL" pool failgrp add "$POOL/fg1"
"$BS" --pool "$POOL" lu create vault --size 64M --mirrored
head -c 64M "$DATA" | "$BS" --pool "$POOL" lu write vault
.venv/bin/python - "$POOL" <<'PY'
import sys
from blockstore.pool import Pool
with Pool.open(sys.argv[1]) as p, p.lu("vault", writable=False) as lu:
    at = lu.physical_extent(0) * p.extent_size + 12345
with open(f"{sys.argv[1]}/fg0/data", "r+b") as f:  # what a failing disk does, silently
    f.seek(at)
    b = f.read(1)
    f.seek(at)
    f.write(bytes([b[0] ^ 0xFF]))
print(f"flipped the byte at offset {at} of {sys.argv[1]}/fg0/data")
PY
"$BS" --pool "$POOL" pool scrub || echo "(scrub exit $?: a bad block, and which copy holds it)"
"$BS" --pool "$POOL" pool scrub --repair
"$BS" --pool "$POOL" lu read vault | cmp - <(head -c 64M "$DATA") && echo "the mirrored LU reads back intact"
"$BS" --pool "$POOL" pool failgrp list
printf '\nThe pool is in ./%s; mount it again with: %s --pool %s mount %s\n' "$POOL" "$BS" "$POOL" "$MNT"
