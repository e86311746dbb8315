"""The bundle contract, torch-free: what the exporter writes and every host reads.

`bundle_format`: the bundle's files, manifest keys and their validation, the step's roles and signature.
`config`: `TextConfig`, the model's shape as the manifest's `config` carries it. `presets`: named shapes
(tiny test models, E2B, E4B). `loop.md` specifies the generation loop every host runs. The Java and C++
readers are checked against these through golden files written by this package's own writers.
Imports nothing of the project but the PLE store.
"""
