"""gemma-edge's vision tower as a bench/vision.py system: `write_vision_program` (the exporter's lowering, the
default 8da8w or "none"), run by ExecuTorch's runtime as `ProgramVisionEncoder` loads it (InternalConsistency
verification, the budget's method alone).

build(spec): {"checkpoint", "pte", "budgets", "quantize"} -> lowers the checkpoint's tower (loaded zero-copy, prepared
in place) into `pte`: one static method `vision_{budget}` per budget. With a bundle (bench/vision.py --bundle) its
`vision.pte` is used as it is instead.
"""
from __future__ import annotations

from pathlib import Path


def imports() -> None:
    import executorch.runtime  # noqa: F401
    import torch  # noqa: F401


def build(spec: dict) -> dict:
    from gemma_edge.export.vision import load_vision_tower
    from gemma_edge.export.vision_export import write_vision_program

    model = load_vision_tower(spec["checkpoint"])   # zero-copy; prepare_vision casts each weight once
    written = write_vision_program(model, spec["pte"], budgets=spec["budgets"], quantize=spec["quantize"],
                                   in_place=True)
    return {"path": spec["pte"], "bytes": written.size, "sha256": written.sha256, "methods": list(written.methods),
            "undelegated": written.undelegated, "quantize": spec["quantize"]}


def load(spec: dict):
    from executorch.runtime import Runtime, Verification

    from gemma_edge.contract.bundle_format import vision_method

    program = Runtime.get().load_program(spec["pte"], verification=Verification.InternalConsistency)
    method = program.load_method(vision_method(spec["budget"]))

    def encode(pixel_values, positions, n):
        soft, valid = method.execute([pixel_values, positions])[:2]
        if int(valid[0].sum()) != n or not bool(valid[0, :n].all()):
            raise RuntimeError(f"{spec['pte']}: expected the first {n} soft tokens valid, found {int(valid.sum())}")
        return soft[0, :n]

    encode.keep = program   # the method lives as long as its program
    encode.info = {"program": Path(spec["pte"]).name, "program_bytes": Path(spec["pte"]).stat().st_size,
                   "method": vision_method(spec["budget"])}
    return encode
