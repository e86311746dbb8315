"""Per-layer-embedding store: a flash-ready file, its streaming writer and its mmap reader."""
