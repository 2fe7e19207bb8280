"""Benchmarks: speed (`bench.speed`) and story coherence (`bench.coherence`), with their data."""
