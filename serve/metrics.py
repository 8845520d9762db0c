"""Serving metrics, pure functions: per-request timings in, vLLM-benchmark-shaped figures out.

Key names follow vLLM's `vllm bench serve` / `bench throughput` results (`request_throughput`,
`requests_per_second`, `output_throughput`, `total_token_throughput`, `mean_ttft_ms`, `p99_tpot_ms`, ...), so that a
results file can sit next to theirs. TTFT: request start to its first output token; TPOT: (end-to-end - TTFT) /
(output tokens - 1), for requests with more than one output token; ITL: the gaps between successive output tokens;
E2EL: request start to its last token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)
THROUGHPUTS = ("request_throughput", "requests_per_second", "output_throughput", "total_token_throughput",
               "tokens_per_second")


@dataclass
class RequestTiming:
    """One request, timed by the benchmark's own clock (seconds since the batch was submitted)."""

    prompt_tokens: int
    output_tokens: int
    ttft: float  # first output token
    e2e: float  # last output token
    token_times: list[float] = field(default_factory=list)  # arrival time of every output token

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


@dataclass(frozen=True)
class ServeMetric:
    """One figure of a prompt set that the reports show: its key in results.json, its column header, which way is
    better, and the key of its spread (the run-to-run std over --iterations for throughputs, the std over requests
    for latencies). `table`: a column of serve's per-model table (and a figure the demo records); `compared`: a
    ratio against the baseline model in results.json's comparisons and their table."""

    key: str
    header: str
    higher_is_better: bool
    spread: str | None = None
    table: bool = True
    compared: bool = True

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


# The serve-metric registry: `leaf serve`'s comparisons and report and the demo's records read it, so that a new
# metric is its computation in `summarize` and one entry here.
SERVE_METRICS: tuple[ServeMetric, ...] = (
    ServeMetric("requests_per_second", "req/s", True, "requests_per_second_std"),
    ServeMetric("output_throughput", "output tok/s", True, "output_throughput_std"),
    ServeMetric("total_token_throughput", "total tok/s", True, "total_token_throughput_std", table=False),
    ServeMetric("mean_ttft_ms", "mean TTFT ms", False, "std_ttft_ms"),
    ServeMetric("p99_tpot_ms", "p99 TPOT ms", False, compared=False),
    ServeMetric("mean_e2el_ms", "mean E2E ms", False, "std_e2el_ms"),
)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats(name: str, seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {}
    mean = sum(ms) / len(ms)
    out = {f"mean_{name}_ms": mean, f"median_{name}_ms": percentile(ms, 50),
           f"std_{name}_ms": math.sqrt(sum((m - mean) ** 2 for m in ms) / len(ms))}
    out.update({f"p{q}_{name}_ms": percentile(ms, q) for q in PERCENTILES})
    return out


def summarize(timings: list[RequestTiming], duration: float) -> dict[str, float | int]:
    """Throughput and latency figures of one run of `timings` that took `duration` seconds of wall clock."""
    if not timings or duration <= 0:
        raise ValueError("summarize needs at least one request and a positive duration")
    prompt = sum(t.prompt_tokens for t in timings)
    output = sum(t.output_tokens for t in timings)
    result: dict[str, float | int] = {
        "duration": duration, "completed": len(timings), "total_input_tokens": prompt,
        "total_output_tokens": output,
        "request_throughput": len(timings) / duration, "requests_per_second": len(timings) / duration,
        "output_throughput": output / duration, "total_token_throughput": (prompt + output) / duration,
        "tokens_per_second": (prompt + output) / duration,
    }
    result.update(_stats("ttft", [t.ttft for t in timings]))
    result.update(_stats("tpot", [t.tpot for t in timings if t.tpot is not None]))
    result.update(_stats("itl", [gap for t in timings for gap in t.itls]))
    result.update(_stats("e2el", [t.e2e for t in timings]))
    return result


def summarize_iterations(iterations: list[tuple[list[RequestTiming], float]]) -> dict:
    """Repeated runs of the same prompts: latency figures over all requests pooled, throughputs the mean over
    iterations (each with its `_std`), counts and duration summed."""
    if not iterations:
        raise ValueError("summarize_iterations needs at least one iteration")
    pooled = summarize([t for timings, _ in iterations for t in timings], sum(d for _, d in iterations))
    runs = [summarize(timings, duration) for timings, duration in iterations]
    for key in THROUGHPUTS:
        values = [r[key] for r in runs]
        mean = sum(values) / len(values)
        pooled[key] = mean
        pooled[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    pooled["iterations"] = len(iterations)
    return pooled


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b
