"""The GEMM peak the benchmarks compare against: best torch.matmul throughput in this process."""

from __future__ import annotations

import time
from typing import Any


def best_gemm_gflops(dtype: Any = None, n: int = 2048, reps: int = 4, rounds: int = 6) -> float:
    """Best GFLOP/s of `reps` n×n matmuls over `rounds` rounds, after 3 warm-ups. This VM's GEMM
    rate varies by ±30 % from second to second, hence the best of several rounds."""
    import torch

    a = torch.randn(n, n, dtype=dtype or torch.float32)
    b = torch.randn(n, n, dtype=dtype or torch.float32)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best
