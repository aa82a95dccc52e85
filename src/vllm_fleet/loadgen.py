"""Steady client load through the official OpenAI client, counting every failure.

Used by the Molecule ``fleet`` scenario (0 failed requests during a rolling upgrade) and by
``benchmarks/upgrade.py`` (latency during an upgrade against steady state). Each worker thread
has its own client and sends chat completions back to back, streaming and non-streaming in
turn. A request counts as failed when the client raises (HTTP errors, refused or cut
connections, timeouts), when a stream ends without a finish reason, or when the answer lacks
the expected text. The client's own retries are off: a retry would hide exactly the errors a
rolling upgrade must not cause.

    with LoadGenerator("http://gateway/v1", key, "smollm2", expect="Paris") as load:
        ...  # the upgrade
    report = load.report
    assert report.failed == 0, report.failures[:5]
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

__all__ = ["LoadGenerator", "LoadReport", "RequestResult", "percentile"]

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


@dataclass(frozen=True)
class RequestResult:
    """One request: when it started and ended (monotonic seconds), how, and what went wrong."""

    started: float
    ended: float
    stream: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.ended - self.started


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadReport:
    """Every request a :class:`LoadGenerator` sent, in the order they ended."""

    results: list[RequestResult] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def failures(self) -> list[RequestResult]:
        return [r for r in self.results if not r.ok]

    @property
    def failed(self) -> int:
        return len(self.failures)

    def window(self, start: float = -math.inf, end: float = math.inf) -> LoadReport:
        """The requests that started at or after ``start`` and ended at or before ``end``."""
        return LoadReport([r for r in self.results if r.started >= start and r.ended <= end])

    def latencies(self, stream: bool | None = None) -> list[float]:
        """Latencies of the successful requests (only streaming or non-streaming ones if asked)."""
        return [r.latency for r in self.results if r.ok and (stream is None or r.stream == stream)]

    def summary(self) -> dict[str, float | int]:
        """Counts and latency percentiles (seconds), as the benchmark and the tests print them."""
        lat = self.latencies()
        return {
            "requests": self.total,
            "failed": self.failed,
            "streams": sum(1 for r in self.results if r.stream),
            "p50_s": percentile(lat, 0.50),
            "p99_s": percentile(lat, 0.99),
        }


class LoadGenerator:
    """``workers`` threads sending chat completions to ``base_url`` until stopped."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        workers: int = 4,
        prompt: str = DEFAULT_PROMPT,
        expect: str | None = None,
        max_tokens: int = 16,
        timeout: float = 300.0,
        pause: float = 0.0,
        rate: float | None = None,
    ) -> None:
        """``pause``: seconds a worker waits after each request. ``rate``: requests per second
        over all workers at most (each worker starts one every ``workers / rate`` seconds, the
        workers staggered; a slower request delays only its own worker's next one), so that
        faster answers do not turn into more load; None: as fast as ``pause`` allows."""
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be above 0 requests per second, got {rate}")
        self.base_url = base_url
        self.model = model
        self.workers = workers
        self.prompt = prompt
        self.expect = expect
        self.max_tokens = max_tokens
        self.pause = pause
        self.rate = rate
        self._api_key = api_key
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.report = LoadReport()

    def _client(self) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self._timeout)

    def _check(self, text: str | None, finish_reason: str | None) -> str | None:
        if finish_reason is None:
            return "no finish reason: the answer was cut off"
        if self.expect is not None and self.expect not in (text or ""):
            return f"unexpected answer {text!r} (expected {self.expect!r} in it)"
        return None

    def _one(self, client: OpenAI, stream: bool) -> str | None:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": self.prompt}]
        if stream:
            parts: list[str] = []
            finish: str | None = None
            for chunk in client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=0,
                stream=True,
            ):
                for delta in chunk.choices:
                    parts.append(delta.delta.content or "")
                    finish = delta.finish_reason or finish
            return self._check("".join(parts), finish)
        reply = client.chat.completions.create(
            model=self.model,
            messages=messages,
            max_tokens=self.max_tokens,
            temperature=0,
        )
        if not reply.choices:
            return "no choices in the reply"
        return self._check(reply.choices[0].message.content, reply.choices[0].finish_reason)

    def _worker(self, index: int) -> None:
        client = self._client()
        stream = index % 2 == 0
        period = self.workers / self.rate if self.rate else 0.0
        try:
            # Staggered, so that the workers' requests are spread over each period.
            self._stop.wait(index / self.rate if self.rate else 0.0)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    error = self._one(client, stream)
                except Exception as exc:  # every failure counts, whatever the client raised
                    error = f"{type(exc).__name__}: {exc}"
                result = RequestResult(started, time.monotonic(), stream, error)
                with self._lock:
                    self.report.results.append(result)
                stream = not stream
                if self.pause:
                    self._stop.wait(self.pause)
                if period:
                    self._stop.wait(started + period - time.monotonic())
        finally:
            client.close()

    def start(self) -> LoadGenerator:
        """Start the workers (each alternates streaming and non-streaming requests)."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), name=f"loadgen-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadReport:
        """Stop after the requests under way have finished; return the report."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.report

    def wait_for(self, requests: int, timeout: float) -> bool:
        """Wait until at least ``requests`` have ended (True) or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.report.total >= requests:
                return True
            time.sleep(0.1)
        return self.report.total >= requests

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
