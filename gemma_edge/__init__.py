"""gemma-edge: Gemma 4 E2B/E4B to phones, with the per-layer-embedding table in flash."""
