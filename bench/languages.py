#!/usr/bin/env python3
"""Plugins by language, side by side in one run: a one-step route per language against a route
without plugins, on the same Portcullis process setup as bench/harness.py (one tokio worker on
core 0; wrk and the nginx upstream on core 1; rounds interleaved).

Contenders: no plugins; the bare wit-bindgen Rust API version gate (tests/guests/bare-filter);
the JavaScript one (plugins/api-version-js, componentize-js); the Python deny list
(plugins/deny-list-py, componentize-py); and each of the three with `isolation = "request"`
(a fresh instance per request). Each gateway runs alone with only its plugin.

Reported per contender: component size; cold compile (cache off) and warm start (the disk
cache answering), both as time from process start to `/readyz` 200; requests/s (median over
rounds) and its ratio to the no-plugin route in the same round; server CPU per request, and the
CPU added over the no-plugin route (the per-call cost under load).

Usage: bench/languages.py [--rounds N] [--duration S]; needs the components built (cargo test
builds them) and `bench/pgo` (the gateway bench/run measures). Prints a Markdown table.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

PLUGINS = harness.PLUGINS
CONTENDERS = {
    # name: (component, step configuration) or None for no plugins
    "none": None,
    "rust": ("bare_filter", '{ allowed = ["1", "2"] }'),
    "js": ("api_version_js", '{ allowed = ["1", "2"] }'),
    "python": ("deny_list_py", '{ paths = ["/admin"], user_agents = ["sqlmap"] }'),
}


def conf(name: str, port: int, admin: int, isolation: str | None, cache: Path, use_cache: bool) -> Path:
    directory = harness.WORK / name
    directory.mkdir(exist_ok=True)
    text = f"""
[[listener]]
address = "127.0.0.1:{port}"

[admin]
address = "127.0.0.1:{admin}"

[reload]
watch = false

[runtime]
compile_cache = {"true" if use_cache else "false"}
compile_cache_dir = "{cache}"

[upstream.app]
endpoints = ["127.0.0.1:{harness.UPSTREAM_PORT}"]
"""
    spec = CONTENDERS[name.split("+")[0]]
    if spec:
        component, step = spec
        text += f'\n[plugin.p]\npath = "{PLUGINS / (component + ".wasm")}"\nkind = "filter"\n'
        if isolation:
            text += f'isolation = "{isolation}"\n'
    text += '\n[[route]]\nid = "r"\npath_prefix = "/api/"\nupstream = "app"\n'
    if spec:
        text += f'\n[[route.chain]]\nplugin = "p"\nconfig = {spec[1]}\n'
    path = directory / "gateway.toml"
    path.write_text(text)
    return path


def ready_after(conf_path: Path, port: int, admin: int) -> tuple[float, harness.Server | None]:
    """Starts the gateway; seconds from process start until /readyz answers 200."""
    started = time.monotonic()
    env = {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"}
    server = harness.Server(conf_path.parent.name, [str(harness.PORTCULLIS), "run", "--config", str(conf_path)],
                            port, harness.SERVER_CORE, env=env, cwd=conf_path.parent)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - started, server
        except OSError:
            pass
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    harness.WORK = Path(tempfile.mkdtemp(prefix="portcullis-langbench-"))
    cache = harness.WORK / "cache"
    token = harness.mint_token()
    upstream = harness.Server("upstream", ["nginx", "-c", str(harness.nginx_conf(harness.UPSTREAM_PORT, proxy=False))],
                              harness.UPSTREAM_PORT, harness.CLIENT_CORE)
    names = ["none", "rust", "js", "python", "rust+request", "js+request", "python+request"]
    ports = {n: 18200 + i for i, n in enumerate(names)}
    admins = {n: 19200 + i for i, n in enumerate(names)}
    starts: dict[str, tuple[float, float]] = {}
    servers: dict[str, harness.Server] = {}
    try:
        for name in names:
            isolation = "request" if name.endswith("+request") else None
            base = name.split("+")[0]
            if base != "none" and isolation is None:
                cold, s = ready_after(conf(name, ports[name], admins[name], None, cache, False), ports[name], admins[name])
                s.stop()
                ready_after(conf(name, ports[name], admins[name], None, cache, True), ports[name], admins[name])[1].stop()
                warm, s = ready_after(conf(name, ports[name], admins[name], None, cache, True), ports[name], admins[name])
                starts[name] = (cold, warm)
                servers[name] = s
            else:
                servers[name] = ready_after(conf(name, ports[name], admins[name], isolation, cache, True),
                                            ports[name], admins[name])[1]
        rps = {n: [] for n in names}
        ratios = {n: [] for n in names}
        cpu = {n: 0.0 for n in names}
        requests = {n: 0.0 for n in names}
        for _ in range(args.rounds):
            this_round = {}
            for name in names:
                url = f"http://127.0.0.1:{ports[name]}/api/orders"
                before = servers[name].cpu()
                rate = harness.wrk(url, args.connections, args.duration, token, extra={"x-api-version": "2"})
                cpu[name] += servers[name].cpu() - before
                requests[name] += rate * args.duration
                this_round[name] = rate
                rps[name].append(rate)
            for name in names:
                ratios[name].append(this_round[name] / this_round["none"])
        base_us = cpu["none"] / requests["none"] * 1e6
        print("| route | component | cold compile → ready | warm start → ready | req/s (median) | ratio to no plugins | CPU/request | added by the step |")
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            spec = CONTENDERS[name.split("+")[0]]
            size = f"{(PLUGINS / (spec[0] + '.wasm')).stat().st_size / 1e6:.1f} MB" if spec else "–"
            cold, warm = (f"{starts[name][0]:.1f} s", f"{starts[name][1]:.2f} s") if name in starts else ("–", "–")
            us = cpu[name] / requests[name] * 1e6
            label = name.replace("+request", ', isolation = "request"')
            print(f"| {label} | {size} | {cold} | {warm} | {statistics.median(rps[name]):,.0f} | "
                  f"{statistics.median(ratios[name]):.2f}× ({min(ratios[name]):.2f}–{max(ratios[name]):.2f}) | "
                  f"{us:.1f} µs | {us - base_us:+.1f} µs |")
    finally:
        for s in servers.values():
            s.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
