"""Linux /proc tools, the one home of them: this process's memory (peak and current RSS and their split),
its file mappings and their resident pages, dropping clean file pages from RSS, and the CPU's ISA (every
benchmark figure names the machine class it was measured on).

Imports nothing of the project and nothing outside the standard library, so the exporter, the runtime and
the benchmark peers' children (which run in other venvs) all use this file.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import platform

PAGE = mmap.PAGESIZE
STATUS_KEYS = ("VmHWM", "VmRSS", "VmLck", "RssAnon", "RssFile", "RssShmem")
_MADV_RANDOM, _MADV_DONTNEED = 1, 4
_PRESENT, _FILE_PAGE = 1 << 63, 1 << 61   # /proc/PID/pagemap entry bits

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def proc_status(pid: int | str = "self", keys=STATUS_KEYS) -> dict[str, int]:
    """VmHWM (peak RSS), VmRSS, VmLck and the RssAnon / RssFile / RssShmem split, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def file_vmas(path: str | os.PathLike) -> list[dict]:
    """This process's mappings of `path` (resolved): start, end, file offset, perms and Rss, from smaps."""
    target, vmas, cur = os.path.realpath(path), [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if head and not head[0].endswith(":"):      # a mapping's header line
                cur = None
                if len(head) == 6 and head[5].strip() == target:
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    cur = {"start": lo, "end": hi, "offset": int(head[2], 16), "perms": head[1], "rss": 0}
                    vmas.append(cur)
            elif cur is not None and head[0] == "Rss:":
                cur["rss"] = int(head[1]) * 1024
    return vmas


def mapping_resident_bytes(path: str | os.PathLike) -> int:
    """Resident bytes (smaps `Rss`) of this process's mappings of `path`."""
    return sum(v["rss"] for v in file_vmas(path))


def resident_file_pages(vmas: list[dict]) -> set[int]:
    """File page numbers mapped resident in this process (pagemap present bit), over all `vmas`: a page
    mapped by several of them counts once."""
    present: set[int] = set()
    with open("/proc/self/pagemap", "rb") as pm:
        for v in vmas:
            n = (v["end"] - v["start"]) // PAGE
            pm.seek(v["start"] // PAGE * 8)
            entries = memoryview(pm.read(n * 8)).cast("Q")
            page0 = v["offset"] // PAGE
            present.update(page0 + i for i, e in enumerate(entries) if e & _PRESENT)
    return present


def release_file_mapping(path: str | os.PathLike) -> dict[str, int]:
    """Unlock and drop this process's resident pages of every read-only mapping of `path`, and mark those
    mappings random-access (no readahead).

    Why: ExecuTorch's loader mmaps the .pte and, run as root, mlocks its constant segment — the in-program
    token embedding included — which an Android app cannot do (64 KiB memlock limit). Once the methods are
    loaded, XNNPACK has packed its own copy of every delegated weight, so what stays mapped is read only by
    the embedding gather, one row per token: faulted back in on use, without dragging neighbouring rows in
    by readahead. Pages of read-only file mappings are clean copies of the file, so dropping them never
    loses data. Returns the bytes of mapping touched and the resident bytes before and after."""
    target = os.path.realpath(path)
    vmas = [v for v in file_vmas(target) if "w" not in v["perms"]]
    before = sum(v["rss"] for v in file_vmas(target))
    for v in vmas:
        addr, size = v["start"], v["end"] - v["start"]
        _libc.munlock(addr, size)
        _libc.madvise(addr, size, _MADV_RANDOM)
        _libc.madvise(addr, size, _MADV_DONTNEED)
    # The page cache holds the file in large folios after the load's sequential read, and a fault maps a
    # whole folio (up to 2 MiB here) into RSS per row gathered; evicting it makes each later fault read
    # one page. (Clean pages: only I/O is lost, never data.)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return {"mapped": sum(v["end"] - v["start"] for v in vmas), "resident_before": before,
            "resident_after": mapping_resident_bytes(target)}


def file_mapping_at(address: int) -> tuple[int, int, str] | None:
    """The /proc/self/maps entry (start, end, path) holding `address`, if it maps a regular file."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                path = fields[5].strip() if len(fields) == 6 else ""
                return (start, end, path) if path.startswith("/") else None
    return None


def all_pages_clean_file_copies(start: int, end: int) -> bool:
    """True when no resident page in [start, end) is anonymous (pagemap bit 61: file page). A private file
    mapping's page that was written has become an anonymous copy: dropping it would bring back the file's
    bytes in place of the written ones."""
    first, count = start // PAGE, (end - start) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = memoryview(f.read(count * 8)).cast("Q")
    return all(not (e & _PRESENT) or (e & _FILE_PAGE) for e in entries)


def release_clean_file_pages(address: int, nbytes: int) -> int:
    """Drop the resident pages of [address, address + nbytes) when they lie in a file mapping and are all
    clean copies of the file (they come back from the file on the next touch). Anonymous memory, and file
    pages written since they were mapped, are left alone (MADV_DONTNEED would lose their contents).
    Returns the bytes of address range released (0 when nothing was)."""
    mapping = file_mapping_at(address) if nbytes else None
    if mapping is None:
        return 0
    start = max(mapping[0], address - address % PAGE)
    end = min(mapping[1], -(-(address + nbytes) // PAGE) * PAGE)
    if not all_pages_clean_file_copies(start, end):
        return 0
    if _libc.madvise(start, end - start, _MADV_DONTNEED) != 0:
        return 0  # best effort: memory stays as it was
    return end - start


# The CPU features our kernels' speed depends on: x86 (AVX2/FMA, AVX-512 and its VNNI, AVX-VNNI, AMX) and Arm
# (NEON dot product, i8mm, SVE, SME), as /proc/cpuinfo spells them.
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "sme")


def cpu_isa(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{"model", "class", "features", "cores"}: class is "avx512" (AVX-512F), "avx2", "arm-i8mm",
    "arm-dotprod", "arm" or "other" — the machine classes benchmark figures are kept apart by."""
    try:
        lines = open(cpuinfo).read().splitlines()
    except OSError:
        lines = []
    def first(*keys: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.split(":", 1)[0].strip() in keys), "")
    flags = set(first("flags", "Features").split())
    features = [f for f in ISA_FEATURES if f in flags]
    if "avx512f" in flags:
        cls = "avx512"
    elif "avx2" in flags:
        cls = "avx2"
    elif "i8mm" in flags:
        cls = "arm-i8mm"
    elif "asimddp" in flags:
        cls = "arm-dotprod"
    elif "asimd" in flags:
        cls = "arm"
    else:
        cls = "other"
    model = first("model name", "Hardware", "CPU part") or platform.processor() or platform.machine()
    return {"model": model, "class": cls, "features": features, "cores": os.cpu_count()}


def isa_line(isa: dict | None = None) -> str:
    """One line naming the machine class: "AMD EPYC 9B14; avx512 (avx2 fma avx512f ...); 2 cores"."""
    isa = isa or cpu_isa()
    return f"{isa['model']}; {isa['class']} ({' '.join(isa['features'])}); {isa['cores']} cores"
