"""HTTP load for the gateway and Flower: N requests from C concurrent clients, or a paced stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.rate, 1),
            "errors": self.errors,
            "latency_ms": {k: _round(v) for k, v in percentiles(ms).items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run(coro: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    return uvloop.run(coro)


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON: a load client that costs the machine little.

    httpx spends several milliseconds of CPU per request, more than the servers under test; this client
    sends a prebuilt request and reads the answer by Content-Length (or chunks), nothing more.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in fields:
            return status, await self.reader.readexactly(int(fields["content-length"]))
        chunks: list[bytes] = []
        while True:  # Transfer-Encoding: chunked
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(chunks)
            chunks.append(chunk[:-2])


async def _post(conn: Connection, body: bytes, result: LoadResult) -> None:
    submitted = time.time()
    start = time.perf_counter()
    status, answer = await conn.post(body)
    result.latencies.append(time.perf_counter() - start)
    if status >= 300:
        result.errors += 1
        if result.errors == 1:
            print(f"  {conn.path}: HTTP {status} {answer[:300]!r}", flush=True)
        return
    result.answers.append((submitted, json.loads(answer)))


async def closed_loop(url: str, headers: dict[str, str], body: Body, requests: int, concurrency: int) -> LoadResult:
    """``requests`` POSTs to ``url`` from ``concurrency`` clients, each sending its next one when answered."""
    result = LoadResult(requests, 0.0)
    connections = [Connection(url, headers) for _ in range(concurrency)]
    await asyncio.gather(*(conn.open() for conn in connections))
    counter = iter(range(requests))

    async def worker(conn: Connection) -> None:
        for i in counter:
            await _post(conn, json.dumps(body(i)).encode(), result)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in connections))
        result.seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))
    return result


async def paced(url: str, headers: dict[str, str], body: Body, rate: float, seconds: float) -> LoadResult:
    """One POST every 1/``rate`` s for ``seconds`` (open loop: a slow answer does not delay the next)."""
    count = max(1, int(rate * seconds))
    result = LoadResult(count, 0.0)
    idle: list[Connection] = []
    opened: list[Connection] = []

    async def one(i: int) -> None:
        conn = idle.pop() if idle else Connection(url, headers)
        if conn not in opened:
            await conn.open()
            opened.append(conn)
        try:
            await _post(conn, json.dumps(body(i)).encode(), result)
        finally:
            idle.append(conn)

    for _ in range(4):  # connections opened before the clock starts
        conn = Connection(url, headers)
        await conn.open()
        opened.append(conn)
        idle.append(conn)
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        pending = []
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not waiting for a condition
            pending.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*pending)
        result.seconds = loop.time() - start
    finally:
        await asyncio.gather(*(conn.close() for conn in opened))
    return result
