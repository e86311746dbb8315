"""Per-layer-embedding store: a flash-ready file, its streaming writer and its mmap reader."""
from .format import Layout, PleHeader, StoredDtype, choose_layout
from .reader import FetchStats, PleFormatError, PleReader, evict, open
from .writer import QuantError, WriteReport, write

__all__ = ["open", "write", "evict", "PleReader", "PleFormatError", "FetchStats", "WriteReport", "QuantError",
           "PleHeader", "Layout", "StoredDtype", "choose_layout"]
