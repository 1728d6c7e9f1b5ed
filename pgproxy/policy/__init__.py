"""Policies: pydantic model, loader (the only I/O), pure decision engine, operator tooling."""
