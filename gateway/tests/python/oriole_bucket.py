"""An OrioleDB-shaped bucket for restore tests and benchmarks, and the data directory a correct
restore of it makes.

The keys and sizes come from a listing of the bucket a real OrioleDB left (oriole-image/testdata/
bucket-listing.tsv: six checkpoints of a 1M-row table, undo, WAL); sizes may be scaled down. The
files a restore reads to decide what else to fetch are written as OrioleDB writes them:
`data/N/global/pg_control` (PostgreSQL 17's ControlFileData, CRC-32C), `data/N/orioledb_data/control`
(OrioleDB's CheckpointControl with the undo ranges the checkpoint retains, CRC-32C),
`file_checksums` and `small_file_checksums` (files unchanged since an earlier checkpoint) and the
`small_files_K` archives. Every other object holds bytes unique to its key.

`Layout.expected` is what the data directory must hold after restoring the last checkpoint:
relative path -> bytes (directories as None).
"""

import random
import struct
from pathlib import Path

LISTING = Path(__file__).resolve().parents[3] / "oriole-image" / "testdata" / "bucket-listing.tsv"
UNDO_FILE_SIZE = 0x4000000
WAL_SEGMENT_SIZE = 16 << 20


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def pg_control(checkpoint_lsn, redo_lsn, timeline=1):
    """PostgreSQL 17's 8 KiB pg_control: version 1700, the checkpoint record's and redo point's
    LSNs, the timeline, 16 MiB segments, the CRC-32C of the first 288 bytes at 288."""
    b = bytearray(8192)
    struct.pack_into("<QI", b, 0, 7443270000000000001, 1700)
    struct.pack_into("<QQI", b, 32, checkpoint_lsn, redo_lsn, timeline)
    struct.pack_into("<I", b, 228, WAL_SEGMENT_SIZE)
    struct.pack_into("<I", b, 288, crc32c(bytes(b[:288])))
    return bytes(b)


def oriole_control(checkpoint, data_undo, system_undo, mmap_length=0):
    """OrioleDB's 8 KiB CheckpointControl (include/checkpoint/control.h): `data_undo` and
    `system_undo` are the (start, end) undo locations the checkpoint retains; the fields the
    upstream loader misreads as those ranges (mmapDataLength, lastUndoLocation) hold other values."""
    b = bytearray(8192)
    struct.pack_into("<QI", b, 0, 0x5EED0000C0FFEE, checkpoint)
    struct.pack_into("<QQQ", b, 16, 1000 + checkpoint, 800 + checkpoint, data_undo[1] + 4096)
    struct.pack_into("<QQQQ", b, 40, 0x3000000, 0x3000000, 0x3000000, mmap_length)
    for i, (start, end) in enumerate((data_undo, system_undo)):
        # lastUndoLocation, checkpointRetainStartLocation, checkpointRetainEndLocation
        struct.pack_into("<QQQ", b, 72 + 24 * i, end + 512, start, end)
    struct.pack_into("<QQQQIB", b, 120, data_undo[0], data_undo[1], 700, 900, 6, 1)
    struct.pack_into("<I", b, 160, crc32c(bytes(b[:160])))
    return bytes(b)


def checksum_lines(files):
    """`file_checksums` text: (name, checkpoint) pairs."""
    return "".join("FILE: %s, CHECKSUM: %08x, CHECKPOINT: %d\n" % (name, crc32c(name.encode()), n)
                   for name, n in files).encode()


def small_files_archive(files):
    """A small_files_K archive: count, (name offset, data offset, length) per file, names, data."""
    header = 4 + 12 * len(files)
    names = b"".join(name.encode() + b"\0" for name, _ in files)
    out = bytearray(struct.pack("<i", len(files)))
    name_at, data_at = header, header + len(names)
    for name, data in files:
        out += struct.pack("<iii", name_at, data_at, len(data))
        name_at += len(name) + 1
        data_at += len(data)
    out += names
    for _, data in files:
        out += data
    return bytes(out)


def body(key, size, seed):
    """`size` bytes unique to `key` and `seed`."""
    rng = random.Random("%s/%d" % (key, seed))
    return rng.randbytes(size)


def read_listing(path=LISTING):
    rows = []
    for line in Path(path).read_text().splitlines()[1:]:
        key, size = line.split("\t")[:2]
        rows.append((key, int(size)))
    return rows


class Layout:
    """The objects of the bucket (key -> bytes) and the restored data directory it implies.

    `scale` divides every size (at least 1 byte kept for non-empty objects); `small_files` is
    how many small files checkpoint 1's archives pack (later checkpoints repack some of them).
    The last checkpoint's undo ranges cover data undo files 1..2 and system undo file 0, the
    redo point lies in WAL segment 0A and the checkpoint record in segment 0B.
    """

    def __init__(self, scale=1, small_files=120, rows=None):
        rows = rows if rows is not None else read_listing()
        self.objects = {}
        self.expected = {}
        size = {k: (0 if s == 0 else max(1, s // scale)) for k, s in rows}
        checkpoints = sorted({int(k.split("/")[1]) for k, _ in rows
                              if k.startswith("data/") and k.split("/")[1].isdigit()})
        self.checkpoint = last = checkpoints[-1]

        # Small files: packed by checkpoint 1; checkpoint m > 1 repacks every m-th one.
        small_names = ["base/5/%d" % (20000 + i) for i in range(small_files)]
        small_latest = {}
        for m in checkpoints:
            archives = sorted((k for k in size if k.startswith("data/%d/orioledb_data/small_files_" % m)),
                              key=lambda k: int(k.rsplit("_", 1)[1]))
            if not archives:
                continue
            packed = [(n, body(n, 1 + (i * 37) % 700, m)) for i, n in enumerate(small_names)
                      if m == 1 or i % m == 0]
            for n, data in packed:
                small_latest[n] = (m, data)
            for j, k in enumerate(archives):
                self.objects[k] = small_files_archive(packed[j::len(archives)])

        # Regular files: the newest data/M/<path> of each path.
        regular_latest = {}
        for k, _ in rows:
            parts = k.split("/")
            if parts[0] != "data" or not parts[1].isdigit():
                continue
            m, rel = int(parts[1]), "/".join(parts[2:])
            if k in self.objects:
                continue
            if k.endswith("/"):
                self.objects[k] = b""
                if m == last:
                    self.expected[rel] = None
                continue
            if rel.startswith("orioledb_data/") and rel.split("/")[1] in (
                    "control", "file_checksums", "small_file_checksums"):
                continue
            self.objects[k] = body(k, size[k], 0)
            # OrioleDB's own files (the xid file) belong to their checkpoint only.
            if rel.startswith("orioledb_data/") and m != last:
                continue
            if m == last or regular_latest.get(rel, (0,))[0] < m:
                regular_latest[rel] = (m, self.objects[k])

        # Checksums of the unchanged files, and the control files, of every checkpoint.
        for m in checkpoints:
            older = sorted((rel, n) for rel, (n, _) in regular_latest.items() if n <= m)
            smalls = sorted((n, c) for n, (c, _) in small_latest.items() if c <= m)
            self.objects["data/%d/orioledb_data/file_checksums" % m] = checksum_lines(older)
            self.objects["data/%d/orioledb_data/small_file_checksums" % m] = checksum_lines(smalls)
            redo = 0x0A * WAL_SEGMENT_SIZE + 0x28 + m
            self.objects["data/%d/global/pg_control" % m] = pg_control(redo + WAL_SEGMENT_SIZE, redo)
            self.objects["data/%d/orioledb_data/control" % m] = oriole_control(
                m, data_undo=(UNDO_FILE_SIZE + 100, 2 * UNDO_FILE_SIZE + 188416),
                system_undo=(0, 24576), mmap_length=0)
        self.objects["data/orioledb_data/control"] = self.objects["data/%d/orioledb_data/control" % last]

        # Maps, data parts, undo, WAL.
        for k, _ in rows:
            if k.startswith(("orioledb_data/", "orioledb_undo/", "wal/")):
                self.objects[k] = body(k, size[k], 0)

        for rel, (_, data) in regular_latest.items():
            if rel.startswith("orioledb_data/small_files_"):
                continue
            self.expected[rel] = data
        for rel in ("global/pg_control", "orioledb_data/control", "orioledb_data/file_checksums",
                    "orioledb_data/small_file_checksums"):
            self.expected[rel] = self.objects["data/%d/%s" % (last, rel)]
        for n, (_, data) in small_latest.items():
            self.expected[n] = data
        for k in self.objects:
            parts = k.split("/")
            if parts[0] == "orioledb_data" and parts[1] == str(last) and k.endswith(".map"):
                self.expected["orioledb_data/%s/%s-%d.map" % (parts[2], parts[3][:-4], last)] = self.objects[k]
        for name in ("orioledb_undo/0000000001data", "orioledb_undo/0000000002data",
                     "orioledb_undo/0000000000system"):
            self.expected[name] = self.objects[name]
        for seg in ("00000001000000000000000A", "00000001000000000000000B"):
            self.expected["pg_wal/" + seg] = self.objects["wal/" + seg]

    def total_bytes(self):
        return sum(len(b) for b in self.objects.values())


def upload(s3, bucket, layout, jobs=16):
    """Puts every object of `layout` into `bucket` with the boto3 client `s3`."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                      layout.objects.items()))


def restored(data_dir):
    """What a data directory holds: relative path -> bytes (directories as None)."""
    root = Path(data_dir)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out
