"""Phone simulation: what a run's PLE fetches and decode steps would cost on a device profile, and the invariants.

Flash model (the same arithmetic as shared/docs/anchors.md): a fetch costs its pages touched as 4 KiB
random reads — all in flight at once (queue depth 32: pages / QD32 IOPS) for our batched fetch, one by one
(pages / QD1 IOPS) for the per-token alternative that LiteRT-LM's CPU path and in-graph embeddings use —
never less than the bytes at the sequential rate. Decode on a phone CPU is bound by reading the
RAM-resident weights (and the KV cache written so far) once per token: bytes / memory bandwidth.
Prefill is compute-bound and is not simulated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PAGE = 4096


@dataclass
class PhoneReport:
    device: str
    prompt_tokens: int
    prompt_pages: int
    batched_fetch_s: float          # one fetch of the prompt's unique rows, QD32
    per_token_fetch_s: float        # the same rows fetched one token at a time, QD1
    sequential_floor_s: float       # the bytes at the sequential rate (no design can beat it)
    decode_fetch_s: float           # one row per generated token, QD1 (a single row cannot be batched)
    decode_ram_s: float             # weights (all but the embedding table) + KV read once per token / bandwidth
    decode_tok_s: float             # 1 / (decode_ram_s + decode_fetch_s)
    ram_needed: int
    ram_usable: int
    encode_s: float | None = None   # the images' tower runs at the device's int8 GEMM rate (None: no image)
    images: int = 0
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    def lines(self) -> list[str]:
        ms = lambda s: f"{s * 1e3:8.2f} ms"   # noqa: E731
        out = [f"simulated on {self.device}:",
               f"  prompt PLE fetch ({self.prompt_tokens} tokens, {self.prompt_pages} pages): batched (QD32) "
               f"{ms(self.batched_fetch_s)} vs per-token (QD1) {ms(self.per_token_fetch_s)}; sequential floor "
               f"{ms(self.sequential_floor_s)}",
               f"  decode per token: RAM-bound {ms(self.decode_ram_s)} + PLE row {ms(self.decode_fetch_s)} → "
               f"{self.decode_tok_s:6.1f} tok/s",
               f"  RAM needed {self.ram_needed / 2**30:.3f} GiB of {self.ram_usable / 2**30:.2f} GiB usable"]
        if self.images:
            out.append(f"  vision encode: {self.images} image(s) "
                       + (f"{self.encode_s * 1e3:8.1f} ms at the profile's int8 GEMM rate (an estimate)"
                          if self.encode_s is not None else "(the profile has no int8 GEMM rate)"))
        for name, (ok, detail) in self.checks.items():
            out.append(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
        return out


def fetch_seconds(pages: int, device: dict, queue_depth: int) -> float:
    iops = device["flash_rand4k_qd32_iops"] if queue_depth >= 32 else device["flash_rand4k_qd1_iops"]
    return max(pages / iops, pages * PAGE / device["flash_seq_read_Bps"])


def simulate(device: dict, *, prompt_tokens: int, prompt_pages: int, row_pages: int, generated: int,
             weight_bytes: int, kv_bytes_per_token: int, ram_needed: int, context_at_end: int,
             images: int = 0, encode_flops: float = 0.0) -> PhoneReport:
    """Costs on `device` for one prompt of `prompt_tokens` whose unique rows touch `prompt_pages` pages, and of
    its `images` (`encode_flops` each: budget.VisionBudget.flops) through the vision tower."""
    bw = device["mem_bandwidth_Bps"]
    avg_ctx = max(1, context_at_end - generated // 2)
    decode_ram = (weight_bytes + kv_bytes_per_token * avg_ctx) / bw
    decode_fetch = fetch_seconds(row_pages, device, 1)
    return PhoneReport(
        device=device["name"], prompt_tokens=prompt_tokens, prompt_pages=prompt_pages,
        batched_fetch_s=fetch_seconds(prompt_pages, device, 32),
        per_token_fetch_s=fetch_seconds(prompt_pages, device, 1),
        sequential_floor_s=prompt_pages * PAGE / device["flash_seq_read_Bps"],
        decode_fetch_s=decode_fetch, decode_ram_s=decode_ram, decode_tok_s=1.0 / (decode_ram + decode_fetch),
        ram_needed=ram_needed, ram_usable=int(device["ram_bytes"] * device["app_ram_fraction"]),
        images=images, encode_s=images * encode_flops / device["int8_gemm_ops"] if images and
        device.get("int8_gemm_ops") else None)


def kv_bytes_per_token(cfg, dtype_bytes: int = 4) -> int:
    """KV bytes read per token of context in a decode step (full layers; sliding ones are capped)."""
    return sum(2 * s.num_key_value_heads * s.head_dim * dtype_bytes for s in cfg.layers if s.owns_kv)


def check_run(report: PhoneReport, stats, reader, fetched_ids, ram_measured: int | None,
              resident_before=()) -> PhoneReport:
    """Invariants of a finished run: one batched fetch for the prompt, PLE residency within the fetched rows'
    pages, RAM within the device's usable share. Evict the file before the run; `resident_before` are the
    pages still resident after that (held by another live mapping of the file, which eviction cannot drop)."""
    report.checks["one batched fetch per prompt"] = (
        stats.prompt_fetches == 1 and stats.token_fetches == max(0, stats.generated - 1),
        f"{stats.prompt_fetches} prompt fetch(es), {stats.token_fetches} per-token fetch(es) for "
        f"{stats.generated} generated tokens")
    if reader is not None and hasattr(reader, "resident_pages"):
        import numpy as np

        resident = set(reader.resident_pages().tolist())
        allowed = set(reader.pages_of(np.unique(np.asarray(fetched_ids, dtype=np.int64))).tolist())
        extra = resident - allowed - set(resident_before)
        report.checks["PLE pages resident ⊆ fetched rows' pages"] = (
            not extra, f"{len(resident)} resident, {len(allowed)} allowed, {len(extra)} beyond "
                       f"({len(extra) * PAGE} B of a {reader.header.file_bytes} B file"
                       + (f"; {len(resident_before)} held by another mapping before the run)" if resident_before
                          else ")"))
    need = ram_measured if ram_measured is not None else report.ram_needed
    report.checks["RAM within device budget"] = (
        need <= report.ram_usable, f"{need / 2**30:.3f} GiB ({'measured' if ram_measured else 'predicted'}) ≤ "
                                   f"{report.ram_usable / 2**30:.2f} GiB usable")
    return report
