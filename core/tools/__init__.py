"""Applications around the engine: benchmark, evaluation, drop-layer search, reports."""
