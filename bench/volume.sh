#!/usr/bin/env bash
# A volume like a Fly volume for the benchmarks: ext4 with its journal, loop-mounted (direct I/O,
# so its pages are not cached twice), for machines whose own filesystem is not (docs/benchmarks.md:
# this machine's root is ext4 without a journal, where every file created scans the inodes deleted
# recently). Needs root. Prints the TMPDIR to run the benchmarks with; `--down` unmounts it.
#
#   eval "$(sudo bench/volume.sh)"          # mounts /mnt/perch-bench-vol, exports TMPDIR
#   perch-bench put-latency ...             # data dirs, floor and restored copies on the volume
#   sudo bench/volume.sh --down
set -euo pipefail
MNT=${PERCH_BENCH_VOL:-/mnt/perch-bench-vol}
IMG=${PERCH_BENCH_VOL_IMG:-/var/tmp/perch-bench-vol.img}
SIZE=${PERCH_BENCH_VOL_SIZE:-24G}

if [[ ${1:-} == --down ]]; then
    if mountpoint -q "$MNT"; then
        dev=$(findmnt -n -o SOURCE "$MNT")
        umount "$MNT"
        losetup -d "$dev"
    fi
    rm -f "$IMG"
    exit 0
fi

if ! mountpoint -q "$MNT"; then
    truncate -s "$SIZE" "$IMG"
    mkfs.ext4 -q -F "$IMG" >&2
    mkdir -p "$MNT"
    dev=$(losetup --find --show --direct-io=on "$IMG")
    mount "$dev" "$MNT"
fi
mkdir -p "$MNT/tmp"
chmod 1777 "$MNT/tmp"
echo "export TMPDIR=$MNT/tmp"
