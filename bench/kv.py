#!/usr/bin/env python3
"""The cost of a fleet-wide quota, side by side in one run: a route without plugins, the same
route with a rate-limit step on the in-process `kv` store, and with it on a local Redis
(`[kv] backend = "redis"`), on the process setup of bench/harness.py (one tokio worker on core
0; wrk, the nginx upstream and redis-server on core 1; rounds interleaved).

Reported per contender: requests/s (median over rounds) and its ratio to the no-plugin route
in the same round; the gateway's CPU per request and what the step adds to it; Redis' own CPU
per request; and the mean time of one `throttle` round trip as the gateway saw it
(`portcullis_kv_command_duration_seconds`), which is the latency the step adds per quota.

Usage: bench/kv.py [--rounds N] [--duration S]; needs the components built (cargo test builds
them), `bench/pgo` (the gateway bench/run measures), nginx, wrk and redis-server. Prints a Markdown
table.
"""

import argparse
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REDIS_PORT = 18379
# A quota no benchmark reaches: every request is checked and admitted.
LIMIT = '{ key = "client-ip", limits = [{ name = "bench", requests = 1000000000, window_ms = 1000 }] }'


def conf(name: str, port: int, admin: int) -> Path:
    directory = harness.WORK / name
    directory.mkdir(exist_ok=True)
    text = f"""
[[listener]]
address = "127.0.0.1:{port}"

[admin]
address = "127.0.0.1:{admin}"

[reload]
watch = false

[upstream.app]
endpoints = ["127.0.0.1:{harness.UPSTREAM_PORT}"]
"""
    if name == "redis":
        text += f'\n[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:{REDIS_PORT}/0"\n'
    if name != "none":
        text += f'\n[plugin.rl]\npath = "{harness.PLUGINS / "rate_limit.wasm"}"\nkind = "rate-limit"\ncapabilities = ["kv"]\n'
    text += '\n[[route]]\nid = "r"\npath_prefix = "/api/"\nupstream = "app"\n'
    if name != "none":
        text += f'\n[[route.chain]]\nplugin = "rl"\nconfig = {LIMIT}\n'
    path = directory / "gateway.toml"
    path.write_text(text)
    return path


def throttle_ms(admin: int) -> tuple[float, float]:
    """Mean duration of a `throttle` call in ms, and the call count, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    def value(suffix: str) -> float:
        m = re.search(r'^portcullis_kv_command_duration_seconds_' + suffix + r'\{backend="redis",op="throttle"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0
    count = value("count")
    return (value("sum") / count * 1e3 if count else 0.0), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    harness.WORK = Path(tempfile.mkdtemp(prefix="portcullis-kvbench-"))
    token = harness.mint_token()
    upstream = harness.Server("upstream", ["nginx", "-c", str(harness.nginx_conf(harness.UPSTREAM_PORT, proxy=False))],
                              harness.UPSTREAM_PORT, harness.CLIENT_CORE)
    redis = harness.redis_server(REDIS_PORT)
    names = ["none", "memory", "redis"]
    ports = {n: 18300 + i for i, n in enumerate(names)}
    admins = {n: 19300 + i for i, n in enumerate(names)}
    servers: dict[str, harness.Server] = {}
    try:
        for name in names:
            env = {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"}
            path = conf(name, ports[name], admins[name])
            servers[name] = harness.Server(name, [str(harness.PORTCULLIS), "run", "--config", str(path)], ports[name],
                                           harness.SERVER_CORE, env=env, cwd=path.parent)
        rps = {n: [] for n in names}
        ratios = {n: [] for n in names}
        cpu = {n: 0.0 for n in names}
        redis_cpu = {n: 0.0 for n in names}
        requests = {n: 0.0 for n in names}
        for _ in range(args.rounds):
            this_round = {}
            for name in names:
                url = f"http://127.0.0.1:{ports[name]}/api/orders"
                before, redis_before = servers[name].cpu(), redis.cpu()
                rate = harness.wrk(url, args.connections, args.duration, token)
                cpu[name] += servers[name].cpu() - before
                redis_cpu[name] += redis.cpu() - redis_before
                requests[name] += rate * args.duration
                this_round[name] = rate
                rps[name].append(rate)
            for name in names:
                ratios[name].append(this_round[name] / this_round["none"])
        base_us = cpu["none"] / requests["none"] * 1e6
        mean_ms, calls = throttle_ms(admins["redis"])
        print("| route | req/s (median) | ratio to no plugins | gateway CPU/request | added by the step | Redis CPU/request | throttle round trip |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            us = cpu[name] / requests[name] * 1e6
            label = {"none": "no plugins", "memory": "rate-limit, in-process kv", "redis": "rate-limit, kv on Redis"}[name]
            rtt = f"{mean_ms:.3f} ms mean over {calls:,.0f} calls" if name == "redis" else "–"
            print(f"| {label} | {statistics.median(rps[name]):,.0f} | "
                  f"{statistics.median(ratios[name]):.2f}× ({min(ratios[name]):.2f}–{max(ratios[name]):.2f}) | "
                  f"{us:.1f} µs | {us - base_us:+.1f} µs | {redis_cpu[name] / requests[name] * 1e6:.1f} µs | {rtt} |")
    finally:
        for s in servers.values():
            s.stop()
        redis.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
