"""Load generator for V2 servers: closed and open loop over binary HTTP, JSON HTTP or gRPC."""

from surge.bench.loadgen import PROTOCOLS, BenchReport, BenchRun, bench_async, run_bench

__all__ = ["PROTOCOLS", "BenchReport", "BenchRun", "bench_async", "run_bench"]
