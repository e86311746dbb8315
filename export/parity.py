"""Parity against the `transformers` reference: build a random HF Gemma 4, save it, load it through our
loader, and compare logits for a whole-sequence forward and for prefill + token-by-token decode."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gemma_edge.contract.config import TextConfig

from .checkpoint import load_checkpoint


@dataclass
class ParityReport:
    preset: str
    seq_len: int
    full_max_abs: float  # whole-sequence logits, ours vs transformers
    cached_max_abs: float  # prefill + decode through our caches vs transformers' whole sequence
    logit_scale: float  # max |logit| of the reference, to read the deltas against
    top1_agreement: float

    def lines(self) -> list[str]:
        return [f"parity vs transformers ({self.preset}, {self.seq_len} tokens, fp32)",
                f"  whole sequence     max |Δlogit| = {self.full_max_abs:.2e}",
                f"  prefill + decode   max |Δlogit| = {self.cached_max_abs:.2e}",
                f"  max |logit| {self.logit_scale:.3f}; top-1 agreement {self.top1_agreement:.1%}"]


def random_hf_model(cfg: TextConfig, seed: int = 0, multimodal: bool = False):
    """A transformers Gemma 4 with random weights large enough that every piece moves the logits."""
    import transformers

    torch.manual_seed(seed)
    hf_cfg = cfg.to_hf()
    if multimodal:
        mm_cfg = transformers.Gemma4Config(text_config=hf_cfg.to_dict(), vision_config=None, audio_config=None)
        model = transformers.Gemma4ForConditionalGeneration(mm_cfg)
    else:
        model = transformers.Gemma4ForCausalLM(hf_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.04)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand_like(b))
    return model.eval()


def hf_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(input_ids=ids).logits.float()


def ours_cached_logits(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Prefill `prefill` tokens, then decode the rest one by one; logits [B, T, V]."""
    model.setup_cache(ids.shape[1] + 4, batch_size=ids.shape[0])
    with torch.no_grad():
        out = [model.forward_cached(ids[:, :prefill], torch.arange(prefill), all_logits=True)]
        for t in range(prefill, ids.shape[1]):
            out.append(model.forward_cached(ids[:, t:t + 1], torch.tensor([t]), all_logits=True))
    return torch.cat(out, dim=1)


def parity_report(preset_name: str = "tiny", seq_len: int = 24, seed: int = 0, multimodal: bool = False,
                  workdir: str | Path | None = None) -> ParityReport:
    from gemma_edge.contract.presets import preset

    cfg = preset(preset_name)
    hf_model = random_hf_model(cfg, seed, multimodal)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        hf_model.save_pretrained(tmp)
        _, ours = load_checkpoint(tmp)
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    ref = hf_logits(hf_model, ids)
    with torch.no_grad():
        full = ours(ids)
    cached = ours_cached_logits(ours, ids, prefill=max(1, seq_len // 3))
    return ParityReport(
        preset=preset_name + (" (multimodal checkpoint)" if multimodal else ""), seq_len=seq_len,
        full_max_abs=(full - ref).abs().max().item(), cached_max_abs=(cached - ref).abs().max().item(),
        logit_scale=ref.abs().max().item(),
        top1_agreement=(cached.argmax(-1) == ref.argmax(-1)).float().mean().item())
