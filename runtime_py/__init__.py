"""Python runtime: sessions over an export bundle, phone simulation and memory budgets."""
