"""Human-readable description of a `.ple` file: header fields, layout, sizes and checksum status."""
from __future__ import annotations

from dataclasses import fields

from .format import StoredDtype
from .reader import PleFormatError, PleReader


def describe(path, verify: bool = True) -> str:
    """The text `gemma-edge inspect FILE.ple` prints; raises PleFormatError if the header is invalid."""
    with PleReader(path) as reader:
        h = reader.header
        lay = h.layout
        lines = [f"{reader.path}", "header:"]
        for f in fields(h):
            v = getattr(h, f.name)
            if f.name == "magic":
                v = v.decode("ascii", "replace")
            elif f.name == "dtype":
                v = f"{v} ({StoredDtype(v).name.lower()})"
            elif isinstance(v, bytes):
                v = v.hex()
            elif f.name == "header_crc32":
                v = f"{v:#010x}"
            elif f.name == "flags":
                v = f"{v:#x} ({'ROW_CRC: a CRC-32 after every row' if h.row_crc else 'no row CRCs'})"
            lines.append(f"  {f.name:<17} {v}")
        payload = h.vocab_size * h.row_bytes
        lines += [
            "layout:",
            f"  rows/group        {lay.rows_per_group} rows in {lay.group_bytes // lay.page_size} pages "
            f"({lay.group_bytes} B), stride {lay.row_stride} B",
            f"  per row           {lay.row_bytes} B payload"
            f"{' + 4 B CRC-32' if h.row_crc else ''}, {lay.bytes_per_row:.1f} B of file, "
            f"{lay.worst_pages_per_row} pages at most (minimum {lay.pages_per_row})",
            f"  padding overhead  {100 * lay.padding_overhead:.2f} %",
            "sizes:",
            f"  payload           {payload:,} B ({payload / 2**30:.3f} GiB)",
            f"  data              {h.data_bytes:,} B in {h.num_groups:,} groups",
            f"  checksums         {h.num_blocks} blocks of {h.block_groups} groups "
            f"({h.block_groups * h.group_bytes:,} B)",
            f"  file              {h.file_bytes:,} B ({h.file_bytes / 2**30:.3f} GiB)",
        ]
        if verify:
            try:
                reader.verify()
                status = f"ok (identity and {h.num_blocks} block CRC-32s)"
            except PleFormatError as e:
                status = f"DAMAGED: {e}"
        else:
            status = "not checked (verify=False); header CRC ok"
        on_fetch = ("each row's CRC-32, on every fetch" if h.row_crc else
                    "each touched block's CRC-32, on a fetch's first touch (minor-0 file: no row CRCs)")
        lines += ["checksums:", f"  {status}", f"  fetch checks      {on_fetch}"]
        return "\n".join(lines)
