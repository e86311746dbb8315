"""The runtime: sessions over a bundle (or a checkpoint, eagerly), the sampler, budgets and the native host."""
from .sampling import Sampler
from .session import GeneratedToken, GenerationError, RunStats, Session

__all__ = ["Session", "GeneratedToken", "GenerationError", "RunStats", "Sampler"]
