"""ExecuTorch's own Gemma 4 example (executorch 1.5.1 wheel, `examples/models/gemma4`) as a bench/vision.py system:
its `vision_encoder` method, exported by the example's own functions from the same checkpoint, run in
`executorch.runtime` as its runner (`run_gemma4._run_vision_pipeline`) runs it.

build(spec) follows `export_gemma4.export_single_pte` step by step for the vision method alone, calling the
example's functions unmodified: `_export_vision_encoder(checkpoint, vision_quantize="8da8w", group_size=128,
max_patches)` (Gemma4ForConditionalGeneration.from_pretrained in fp32, the int8 position table looked up by
one_hot @ table, torchao 8da8w of every linear, a "dynamic" patch count 9·[1, max_patches/9]), then
`run_decompositions({})`, `to_edge_transform_and_lower` with its `_build_partitioners(...)["vision_encoder"]`
([XnnpackDynamicallyQuantizedPartitioner, XnnpackPartitioner]) and `_check_ir_validity=False`, and `to_executorch`
with its backend config. `export_single_pte` itself always adds the text decoder, which this benchmark does not
need (and whose `Gemma4Config.from_config` reads a config file the wheel lacks); so the vision steps are taken
from it as they are. max_patches: the example's default 1260 (140 soft tokens), whatever its help text says.

The runner preprocesses at 280 soft tokens (`image_utils.preprocess_image(max_soft_tokens=280)`: 2520 patches).
load(spec) reads the method's input bounds from its metadata (`input_sizes_max`) so the result says what the
program accepts.
"""
from __future__ import annotations

from pathlib import Path

ET_MAX_PATCHES = 1260   # export_gemma4.py: --max_patches default, and export_single_pte's
ET_VISION_QUANT = "8da8w"   # export_gemma4.py: --vision_quantize default
METHOD = "vision_encoder"


def imports() -> None:
    import executorch.runtime  # noqa: F401
    import torch  # noqa: F401


def build(spec: dict) -> dict:
    from executorch.examples.models.gemma4 import export_gemma4 as ex
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.exir.capture._config import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    quant, max_patches = spec.get("quantize", ET_VISION_QUANT), spec.get("max_patches", ET_MAX_PATCHES)
    ep = ex._export_vision_encoder(spec["checkpoint"], quant, group_size=128, max_patches=max_patches)
    ep = ep.run_decompositions({})
    partitioners = ex._build_partitioners(False, True, "8da4w", quant, "8da4w+emb8")
    edge = to_edge_transform_and_lower({METHOD: ep}, compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                       partitioner={METHOD: partitioners[METHOD]},
                                       transform_passes=ex._build_transform_passes(False, True))
    program = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    with open(spec["pte"], "wb") as f:
        program.write_to_file(f)
    # What the exported program's own placeholder says the patch dimension is, after run_decompositions
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name.startswith("pixel_values"))
    return {"path": spec["pte"], "bytes": Path(spec["pte"]).stat().st_size, "quantize": quant,
            "max_patches": max_patches, "exported_pixel_values_shape": [str(s) for s in placeholder.meta["val"].shape],
            "steps": "export_gemma4._export_vision_encoder -> run_decompositions({}) -> to_edge_transform_and_lower "
                     "(its partitioners) -> to_executorch (its backend config)"}


def load(spec: dict):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(spec["pte"])
    method = program.load_method(METHOD)

    def encode(pixel_values, positions, n):
        out = method.execute([pixel_values, positions])
        soft, valid = out[0], out[1]
        if int(valid[0].sum()) != n:
            raise RuntimeError(f"{METHOD}: {int(valid[0].sum())} valid soft tokens, expected {n} (the image's)")
        return soft[0, :n]

    meta = method.metadata
    encode.keep = program
    encode.info = {"program": Path(spec["pte"]).name, "program_bytes": Path(spec["pte"]).stat().st_size,
                   "input_sizes_max": [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]}
    return encode
