#!/usr/bin/env python3
"""Where a plugin step's time goes, guest functions included: the gateway with the harness'
chain (or the steps named), under wrk's load on the harness' setup (bench/harness.py), sampled
with `perf record` (software clock: this VM has no hardware counters) while wasmtime writes a
perf map of the plugins' compiled functions (`PORTCULLIS_WASM_PERFMAP=1`), so guest code shows
by its function names (`dlmalloc`, `jwt_auth::JwtAuth::verify`, the canonical ABI's export
glue) instead of as anonymous JIT.

Prints the gateway's samples by part (kernel, the gateway's own binary, libraries, the plugins'
compiled code), then the hottest symbols overall and the hottest plugin functions, each with
its share of the samples and, from the process's CPU time and the requests served, its server
CPU per request in µs. The numbers
carry perf's own overhead and this VM's noise: compare shares within one run, and use
bench/callgrind.py for before and after.

Usage: bench/perf-guests.py [--steps jwt,rbac,ratelimit,validate,audit] [--seconds S] [--top N];
needs what bench/run installs and builds, and `perf`.
"""

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

PORT, ADMIN = 18190, 19190


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="jwt,rbac,ratelimit,validate,audit")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    harness.WORK = Path(tempfile.mkdtemp(prefix="portcullis-perf-guests-"))
    token = harness.mint_token()
    url = f"http://127.0.0.1:{PORT}/api/orders"
    upstream = harness.Server("upstream", ["nginx", "-c", str(harness.nginx_conf(harness.UPSTREAM_PORT, proxy=False))],
                              harness.UPSTREAM_PORT, harness.CLIENT_CORE)
    conf = harness.portcullis_conf("perf-guests", PORT, ADMIN, steps)
    env = {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn", "PORTCULLIS_WASM_PERFMAP": "1"}
    gateway = harness.Server("perf-guests", [str(harness.PORTCULLIS), "run", "--config", str(conf)], PORT,
                             harness.SERVER_CORE, env=env, cwd=conf.parent)
    data = harness.WORK / "perf-guests.data"
    try:
        harness.wrk(url, 32, 2, token)  # warm-up
        pid = gateway.pids[0]
        cpu_before = gateway.cpu()
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4000", "-p", str(pid), "-o", str(data),
                                 "--", "sleep", str(args.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        rps = harness.wrk(url, 32, args.seconds, token)
        perf.wait()
        elapsed = time.monotonic() - started
        cpu = gateway.cpu() - cpu_before
    finally:
        gateway.stop()
        upstream.stop()
    requests = rps * args.seconds
    us_per_request = cpu / requests * 1e6
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol", "--stdio",
                             "--percent-limit", "0"], capture_output=True, text=True).stdout
    shares = []
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\[JIT\] tid \d+|\S+)\s+\[[.k]\]\s+(.*?)(\s+-\s+-)?\s*$", line)
        if m:
            shares.append((float(m.group(1)), part(m.group(2)), demangle(m.group(3))))
    # A function name appears once per component that has it (each plugin links its own
    # `dlmalloc`); sum them.
    summed = collections.Counter()
    for share, where, symbol in shares:
        summed[(where, symbol)] += share
    shares = sorted(((share, where, symbol) for (where, symbol), share in summed.items()), reverse=True)
    print(f"steps: {', '.join(steps) or 'none'}; {rps:,.0f} req/s; {us_per_request:.1f} µs server CPU per request "
          f"(perf running, {elapsed:.1f} s)\n")
    groups = collections.Counter()
    for share, where, symbol in shares:
        groups[where if where != HOST else f"{HOST}: {crate(symbol)}"] += share
    print("| part | share | µs / request |\n|---|---|---|")
    for where, share in groups.most_common():
        print(f"| {where} | {share:.1f}% | {share / 100 * us_per_request:.1f} |")
    for title, pick in [("hottest symbols", lambda w: True), ("hottest plugin (guest) functions", lambda w: w == GUEST)]:
        print(f"\n{title}:\n\n| share | µs / request | part | symbol |\n|---|---|---|---|")
        for share, where, symbol in [s for s in shares if pick(s[1])][:args.top]:
            print(f"| {share:.2f}% | {share / 100 * us_per_request:.2f} | {where} | `{symbol[:100]}` |")


GUEST = "plugins (wasm, compiled)"
HOST = "gateway binary"
CRATES = {"portcullis": "Portcullis' own code", "wasmtime": "wasmtime", "wasmtime_environ": "wasmtime",
          "cranelift": "wasmtime", "hyper": "hyper", "hyper_util": "hyper", "tokio": "tokio", "http": "hyper",
          "_rjem": "jemalloc", "prometheus_client": "metrics and tracing", "opentelemetry": "metrics and tracing",
          "tracing": "metrics and tracing", "sha2": "SHA-256 (audit chain)", "serde_json": "serde_json"}


def crate(symbol: str) -> str:
    """The library a host symbol belongs to, roughly: the first crate named in its path that is
    listed in `CRATES` (so `<(A1,A2) as wasmtime::...::Lower>::lower` is wasmtime's)."""
    if symbol.startswith("_rjem"):
        return CRATES["_rjem"]
    for segment in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)::", symbol):
        if segment in CRATES:
            return CRATES[segment]
    return "other (core, alloc, std, small crates)"
ESCAPES = {"$LT$": "<", "$GT$": ">", "$RF$": "&", "$BP$": "*", "$u20$": " ", "$C$": ",", "$u5b$": "[",
           "$u5d$": "]", "$u7b$": "{", "$u7d$": "}", "$u27$": "'", "$LP$": "(", "$RP$": ")", "..": "::"}


def demangle(symbol: str) -> str:
    """A Rust legacy-mangled name (`_ZN...E`, as the guests' names reach the perf map) made
    readable, its hash dropped; other names as they are."""
    m = re.fullmatch(r"_ZN(.*)E", symbol)
    if not m:
        return symbol
    rest, parts = m.group(1), []
    while rest and rest[0].isdigit():
        n = re.match(r"\d+", rest).group(0)
        rest = rest[len(n):]
        parts.append(rest[:int(n)])
        rest = rest[int(n):]
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    text = "::".join(p[1:] if p.startswith("_$") else p for p in parts)
    for escape, char in ESCAPES.items():
        text = text.replace(escape, char)
    return text


def part(dso: str) -> str:
    """What a perf DSO column stands for."""
    if dso.startswith("[JIT]"):
        return GUEST
    if dso == "[kernel.kallsyms]":
        return "kernel"
    if dso == "portcullis":
        return HOST
    return f"library {dso}"


if __name__ == "__main__":
    main()
