"""The Gemma 4 E-model decoder in PyTorch, checkpoint loading and lowering to ExecuTorch / ONNX.

The public API is importable from here (`from gemma_edge.export import load_checkpoint`); each name is
imported on first use, so `gemma_edge.contract.bundle_format`, which every runtime reads, does not pull in
torch and the model.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "load_checkpoint": "checkpoint", "open_checkpoint": "checkpoint", "ple_row_chunks": "checkpoint",
    "CheckpointError": "checkpoint",
    "TextConfig": "gemma_edge.contract.config", "ConfigError": "gemma_edge.contract.config",
    "export_bundle": "exporter", "ExportSettings": "exporter", "ExportError": "exporter",
    "write_random_checkpoint": "random_checkpoint", "preset": "gemma_edge.contract.presets", "build_model": "model",
    "BundleError": "gemma_edge.contract.bundle_format",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _PUBLIC[name]
    value = getattr(importlib.import_module(module if "." in module else f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
