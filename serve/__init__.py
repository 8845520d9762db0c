"""leaf.serve: the vLLM layer (throughput, latency, accuracy and attention focus of distilled students).

Not built yet: issue 5 fills it in. It installs as `leaf.serve` (see pyproject.toml's package-dir).
"""
