"""Python runtime: sessions over an export bundle, phone simulation and memory budgets."""
from .sampling import Sampler
from .session import GeneratedToken, RunStats, Session
from .tokenizer import build_test_tokenizer, write_test_tokenizer

__all__ = ["Session", "GeneratedToken", "RunStats", "Sampler", "build_test_tokenizer", "write_test_tokenizer"]
