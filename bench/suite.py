"""Every scenario of the performance targets in one command, ours against the reference design built like the
original connector, printed as the markdown tables docs/performance.md quotes.

    .venv/bin/python bench/suite.py            # about 25 minutes on a 2-core machine
    .venv/bin/python bench/suite.py --quick    # fewer requests and one run each: a smoke check (~2 minutes)

Each figure is the median of `--repeats` runs (the machine's other work moves single runs by +-15 %). Every
run starts its own Mosquitto, simulator and connector (durable journal, fsync on every commit). The suite runs
twice: first on Mosquitto as shipped (Nagle's algorithm on; as users run it), then tuned (set_tcp_nodelay).
Not part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import throughput


def runs(repeats: int, argv: list[str]) -> tuple[argparse.Namespace, list[dict[str, Any]]]:
    args = throughput.parse(argv)
    results = []
    for _ in range(repeats):
        results.append(throughput.measure(args))
        print(throughput.row(args, results[-1]), file=sys.stderr, flush=True)
    return args, results


def median(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(result[key] for result in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests, one run each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-in-flight", type=int, help="default: the connector's own (128)")
    options = parser.parse_args()
    for stock in (True, False):
        title = "Mosquitto as shipped (stock)" if stock else "Mosquitto tuned (set_tcp_nodelay true)"
        print(f"## {title}\n")
        suite(options, stock)


def suite(options: argparse.Namespace, stock: bool) -> None:
    repeats = 1 if options.quick else options.repeats
    burst, slow_reference, backlog = (2000, 50, 20_000) if options.quick else (10_000, 300, 100_000)
    common = ["--max-in-flight", str(options.max_in_flight)] if options.max_in_flight else []
    if stock:
        common.append("--stock-broker")

    rows: list[str] = []

    def scenario(count: int, argv: list[str]) -> list[dict[str, Any]]:
        args, results = runs(count, [*argv, *common])
        rows.extend(throughput.row(args, result) for result in results)
        return results

    fast = scenario(repeats, ["--requests", str(burst)])
    fast_ref = scenario(repeats, ["--requests", str(burst), "--reference"])
    slow = scenario(repeats, ["--requests", str(burst), "--latency-ms", "100"])
    slow_ref = scenario(1, ["--requests", str(slow_reference), "--latency-ms", "100", "--reference"])
    steady = {rate: scenario(1, ["--requests", str(rate * 20), "--rate", str(rate)]) for rate in (50, 200)}
    steady_ref = {
        rate: scenario(1, ["--requests", str(rate * 20), "--rate", str(rate), "--reference"]) for rate in (50, 200)
    }
    half = round(median(fast, "rate") / 2)
    paced = scenario(repeats, ["--requests", str(burst // 2), "--rate", str(half)])
    drained = scenario(1, ["--requests", str(backlog), "--backlog"])

    def ratio(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> float:
        return median(ours, "rate") / median(reference, "rate")

    checks = [
        (
            "throughput, Twilio at 0 ms (notifications/s)",
            f"{median(fast, 'rate'):.0f} vs {median(fast_ref, 'rate'):.0f}",
            f"{ratio(fast, fast_ref):.1f}x",
            ">= 4x",
            ratio(fast, fast_ref) >= 4,
        ),
        (
            "throughput, Twilio at 100 ms (notifications/s)",
            f"{median(slow, 'rate'):.0f} vs {median(slow_ref, 'rate'):.1f}",
            f"{ratio(slow, slow_ref):.0f}x",
            ">= 100x",
            ratio(slow, slow_ref) >= 100,
        ),
        (
            "connector CPU per notification at 0 ms",
            f"{median(fast, 'cpu_ms'):.2f} ms (reference {median(fast_ref, 'cpu_ms'):.2f})",
            "",
            "<= 0.6 ms",
            median(fast, "cpu_ms") <= 0.6,
        ),
        *(
            (
                f"latency p50 / p99 at a steady {rate}/s",
                f"{median(steady[rate], 'p50'):.1f} / {median(steady[rate], 'p99'):.1f} ms (reference "
                f"{median(steady_ref[rate], 'p50'):.1f} / {median(steady_ref[rate], 'p99'):.1f})",
                "",
                "no worse than the reference; p99 <= 20 ms",
                median(steady[rate], "p99") <= max(20.0, median(steady_ref[rate], "p99"))
                and median(steady[rate], "p50") <= median(steady_ref[rate], "p50") * 1.1,
            )
            for rate in (50, 200)
        ),
        (
            f"p99 added latency at half the maximum ({half}/s)",
            f"{median(paced, 'p99'):.1f} ms (p50 {median(paced, 'p50'):.1f})",
            "",
            "<= 10 ms",
            median(paced, "p99") <= 10,
        ),
        ("RSS idle", f"{median(fast, 'idle_rss'):.1f} MB", "", "<= 50 MB", median(fast, "idle_rss") <= 50),
        (
            f"RSS peak draining a {backlog:,} backlog",
            f"{median(drained, 'peak_rss'):.1f} MB at {median(drained, 'rate'):.0f}/s",
            "",
            "<= 120 MB",
            median(drained, "peak_rss") <= 120,
        ),
        ("ready after launch", f"{median(fast, 'ready_s'):.2f} s", "", "<= 1 s", median(fast, "ready_s") <= 1),
    ]
    slots = options.max_in_flight or "128 (default)"
    print(f"Medians of {repeats} run(s); max_in_flight {slots}; journal fsync on every commit.\n")
    print("| measure | ours (vs reference) | ratio | target | met |")
    print("|---|---|---|---|---|")
    for measure, value, factor, target, met in checks:
        print(f"| {measure} | {value} | {factor} | {target} | {'yes' if met else 'no'} |")
    print("\nEvery run:\n")
    print(throughput.HEADER)
    print("\n".join(rows))
    print()


if __name__ == "__main__":
    main()
