"""HTTP load for the gateway and Flower: N requests from C concurrent clients, or a paced stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvloop

from bench.measure import percentiles

Body = Callable[[int], Any]


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    answers: list[tuple[float, Any]] = field(default_factory=list)  # (submitted at, JSON answer)
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        ms = [lat * 1000 for lat in self.latencies]
        return {"requests": self.requests, "seconds": round(self.seconds, 3), "req_per_s": round(self.rate, 1),
                "errors": self.errors, "latency_ms": {k: _round(v) for k, v in percentiles(ms).items()}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    return uvloop.run(coro)


async def _post(client: httpx.AsyncClient, url: str, body: Any, result: LoadResult) -> None:
    submitted = time.time()
    start = time.perf_counter()
    response = await client.post(url, json=body)
    result.latencies.append(time.perf_counter() - start)
    if response.status_code >= 300:
        result.errors += 1
        if result.errors == 1:
            print(f"  {url}: HTTP {response.status_code} {response.text[:300]}", flush=True)
        return
    result.answers.append((submitted, response.json()))


async def closed_loop(url: str, headers: dict[str, str], body: Body, requests: int, concurrency: int
                      ) -> LoadResult:
    """``requests`` POSTs to ``url`` from ``concurrency`` clients, each sending its next one when answered."""
    result = LoadResult(requests, 0.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
        await client.get(url)  # open a connection (the answer is 405; nothing is submitted)
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                await _post(client, url, body(i), result)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


async def paced(url: str, headers: dict[str, str], body: Body, rate: float, seconds: float) -> LoadResult:
    """One POST every 1/``rate`` s for ``seconds`` (open loop: a slow answer does not delay the next)."""
    count = max(1, int(rate * seconds))
    result = LoadResult(count, 0.0)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
        await client.get(url)
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = []
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not waiting for a condition
            pending.append(asyncio.ensure_future(_post(client, url, body(i), result)))
        await asyncio.gather(*pending)
        result.seconds = loop.time() - start
    return result
