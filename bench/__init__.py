"""Benchmarks: the bare gRPC ceiling, natter chat throughput and latency, reconnect sync time."""
