#!/usr/bin/env python3
"""Writes the seed corpus of the apply_layer target into corpus/apply_layer/ (small hostile
layers; see crates/pitwall-image/tests/hostile.rs for what each must do). Run from fuzz/."""
import gzip, io, os, subprocess, tarfile

SEP = b"--PITWALL-NEXT-LAYER--"
OUT = "corpus/apply_layer"


def tar(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            kind, name = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            data = b""
            if kind == "file":
                data = e[2] if len(e) > 2 else b"x"
                ti.size = len(data)
                ti.mode = e[3] if len(e) > 3 else 0o644
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e[2], 0o777
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, e[2]
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            if kind == "xattr":
                data = b"x"
                ti.size = 1
                ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in e[2].items()}
            t.addfile(ti, io.BytesIO(data) if data else None)
    # tarfile pads to 10 KiB records: keep only the end marker after the last block.
    body = buf.getvalue().rstrip(b"\0")
    return body + b"\0" * (-len(body) % 512 + 1024)


seeds = {
    "plain": tar([("dir", "etc/"), ("file", "etc/hosts", b"127.0.0.1 localhost\n"),
                  ("file", "bin/su", b"su", 0o4755), ("sym", "bin/sh", "busybox"),
                  ("file", "bin/busybox", b"BB"), ("hard", "bin/ash", "bin/busybox"),
                  ("sym", "etc/mtab", "/proc/mounts")]),
    "traversal": tar([("file", "../outside/pwned"), ("file", "a/../../outside/pwned")]),
    "absolute": tar([("file", "/outside/pwned"), ("sym", "abs", "/")]),
    "symlink-then-write": tar([("sym", "evil", "../outside"), ("file", "evil/pwned")]),
    "symlink-chain": tar([("sym", "a", "b"), ("sym", "b", "../outside"), ("file", "a/pwned")]),
    "symlink-two-layers": tar([("sym", "etc", "../outside")]) + SEP
    + tar([("file", "etc/secret", b"overwritten")]),
    "hardlink-out": tar([("hard", "h", "../outside/secret")]),
    "hardlink-through-symlink": tar([("sym", "s", "../outside"), ("hard", "x", "s/secret")]),
    "hardlink-to-symlink": tar([("sym", "s", "../outside/secret"), ("hard", "h", "s"),
                                ("file", "h", b"replaced")]),
    "whiteouts": tar([("file", "a/x"), ("file", "d/old"), ("dir", "keep/")]) + SEP
    + tar([("file", "a/.wh.x", b""), ("file", "d/new"), ("file", "d/.wh..wh..opq", b""),
           ("file", ".wh..wh..opq", b""), ("file", ".wh...", b"")]),
    "whiteout-dotdot": tar([("dir", "sub/"), ("file", "sub/.wh..", b"")]),
    "dir-mtime-through-symlink": tar([("dir", "a/b/")]) + SEP + tar([("sym", "a", "../outside")]),
    "replace-dir-by-file": tar([("file", "x/inner"), ("file", "x", b"file"), ("dir", "x/")]),
    "devices": tar([("chr", "dev/null"), ("fifo", "run/fifo"), ("file", "ok")]),
    "xattrs": tar([("xattr", "f", {"user.a": "1", "trusted.overlay.opaque": "y",
                                   "user.overlay.opaque": "y", "security.capability": "x"})]),
    "gnu-longname": tar([("file", "d/" * 60 + "../../outside/pwned")], fmt=tarfile.GNU_FORMAT),
    "pax-longname": tar([("file", "d/" * 60 + "f")]),
}
seeds["gzip"] = gzip.compress(seeds["symlink-then-write"], mtime=0)
seeds["zstd"] = subprocess.run(["zstd", "-q", "-c"], input=seeds["whiteouts"].split(SEP)[0],
                               capture_output=True, check=True).stdout

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
