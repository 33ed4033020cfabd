"""Every scenario of the performance targets in one command, ours against the reference design built like the
original connector, printed as the markdown tables docs/performance.md quotes.

    .venv/bin/python bench/suite.py            # about an hour on a 2-core machine
    .venv/bin/python bench/suite.py --quick    # fewer requests and one run each: a smoke check (~2 minutes)

The goals are issue 27's, each a ratio to the reference design in the same run where it has one. Each figure is
the median of `--repeats` runs (the machine's other work moves single runs by +-15 %). Every
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
    steady = {rate: scenario(repeats, ["--requests", str(rate * 20), "--rate", str(rate)]) for rate in (50, 200)}
    steady_ref = {
        rate: scenario(repeats, ["--requests", str(rate * 20), "--rate", str(rate), "--reference"])
        for rate in (50, 200)
    }
    half = round(median(fast, "rate") / 2)
    paced = scenario(repeats, ["--requests", str(burst // 2), "--rate", str(half)])
    drained = scenario(1, ["--requests", str(backlog), "--backlog"])
    pg_fast = scenario(repeats, ["--requests", str(burst), "--journal", "postgres"])
    pg_steady = scenario(repeats, ["--requests", "1000", "--rate", "50", "--journal", "postgres"])
    ours_idle = [throughput.footprint(reference=False) for _ in range(repeats)]
    ref_idle = [throughput.footprint(reference=True) for _ in range(repeats)]
    idle_rss, ref_rss = (statistics.median(rss for _, rss in runs) for runs in (ours_idle, ref_idle))
    ready_s = statistics.median(ready for ready, _ in ours_idle)
    bound = (options.max_in_flight or 128) / 0.1

    def ratio(ours: list[dict[str, Any]], reference: list[dict[str, Any]], key: str = "rate") -> float:
        return median(ours, key) / median(reference, key)

    def cpu_row(rate: int) -> tuple[str, str, str, str, bool]:
        factor = ratio(steady[rate], steady_ref[rate], "cpu_ms")
        figures = f"{median(steady[rate], 'cpu_ms'):.2f} vs {median(steady_ref[rate], 'cpu_ms'):.2f} ms"
        return (f"CPU per notification at a steady {rate}/s", figures, f"{factor:.2f}x", "<= 0.5x", factor <= 0.5)

    checks = [
        cpu_row(50),
        cpu_row(200),
        (
            "RSS idle, default settings",
            f"{idle_rss:.1f} vs {ref_rss:.1f} MB",
            "",
            "<= the reference's",
            idle_rss <= ref_rss,
        ),
        ("ready after launch, default settings", f"{ready_s:.2f} s", "", "<= 0.5 s", ready_s <= 0.5),
        (
            "throughput, Twilio at 0 ms (notifications/s)",
            f"{median(fast, 'rate'):.0f} vs {median(fast_ref, 'rate'):.0f}",
            f"{ratio(fast, fast_ref):.1f}x",
            ">= 4x",
            ratio(fast, fast_ref) >= 4,
        ),
        (
            "throughput, Twilio at 100 ms (notifications/s)",
            f"{median(slow, 'rate'):.0f} of a {bound:.0f} bound (reference {median(slow_ref, 'rate'):.1f})",
            f"{median(slow, 'rate') / bound:.0%}",
            ">= 95 % of max_in_flight / latency",
            median(slow, "rate") >= 0.95 * bound,
        ),
        (
            f"p99 added latency at half the maximum ({half}/s)",
            f"{median(paced, 'p99'):.1f} ms (p50 {median(paced, 'p50'):.1f})",
            "",
            "<= 10 ms",
            median(paced, "p99") <= 10,
        ),
        *(
            (
                f"latency p50 / p99 at a steady {rate}/s",
                f"{median(steady[rate], 'p50'):.1f} / {median(steady[rate], 'p99'):.1f} ms (reference "
                f"{median(steady_ref[rate], 'p50'):.1f} / {median(steady_ref[rate], 'p99'):.1f})",
                "",
                "p50 within 10 % of the reference's, p99 within max(20 ms, the reference's)",
                median(steady[rate], "p99") <= max(20.0, median(steady_ref[rate], "p99"))
                and median(steady[rate], "p50") <= median(steady_ref[rate], "p50") * 1.1,
            )
            for rate in (50, 200)
        ),
        (
            f"RSS peak draining a {backlog:,} backlog",
            f"{median(drained, 'peak_rss'):.1f} MB at {median(drained, 'rate'):.0f}/s",
            "",
            "<= 120 MB",
            median(drained, "peak_rss") <= 120,
        ),
        (
            "PostgreSQL journal: 0 ms burst; CPU per notification at 0 ms and at a steady 50/s",
            f"{median(pg_fast, 'rate'):.0f}/s; {median(pg_fast, 'cpu_ms'):.2f} and {median(pg_steady, 'cpu_ms'):.2f} ms "
            f"(SQLite {median(fast, 'cpu_ms'):.2f} and {median(steady[50], 'cpu_ms'):.2f})",
            "",
            "reported",
            True,
        ),
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
