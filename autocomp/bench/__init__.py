"""Benchmarks behind every number the README claims: `autocomp bench NAME [--quick]`."""

BENCHES = {"primitives": "autocomp.bench.primitives", "search": "autocomp.bench.search",
           "parallel": "autocomp.bench.parallel", "deep-compression": "autocomp.bench.deep_compression",
           "latency": "autocomp.bench.latency", "soak": "autocomp.bench.soak",
           "architectures": "autocomp.bench.architectures",
           "models": "autocomp.bench.models", "lm": "autocomp.bench.lm",
           "efficiency": "autocomp.bench.efficiency"}
