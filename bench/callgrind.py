#!/usr/bin/env python3
"""The per-request budget in instructions: each contender under callgrind, serving the request
of bench/harness.py (POST /api/orders, a 58-byte JSON body, a 600-byte bearer token) from the
same nginx upstream.

Wall time on this shared VM moves by 10-20% between rounds; instruction counts move by well
under 1%, so they are how a change on the request path is judged before and after (the
harness then gives the ratios to nginx). Reported per contender, over the measured requests
only (the server starts and warms up uninstrumented):

- instructions per request (callgrind's `Ir`, every thread of the server process: the
  kernel's share is not counted, which is why these ratios differ from the harness' CPU ratios);
- Rust heap allocations per request (calls to `__rust_alloc`, `__rust_alloc_zeroed` and
  `__rust_realloc`; C code and wasm guests' own allocators are not counted);
- component-model crossings per request: strings and lists the host lowers into a guest (each
  a `cabi_realloc` call into wasm), guest calls to host functions, and host calls of guest
  exports, counted by the wasmtime 48 function each goes through (`CROSSINGS`; another
  wasmtime may name them otherwise, and then they count 0);
- for Portcullis steps, added one at a time in the harness chain's order, the instructions,
  allocations and crossings each adds to the row before it.

Contenders: nginx as a proxy; the hyper yardstick (tests/examples/yardstick.rs) with its pooled
client, with an upstream connection per client connection driven by a task of its own, and
driven by the client connection's task; Portcullis without plugins, then with the harness'
five-step chain built up one step at a time (jwt-auth, rbac, rate-limit, request-validation,
audit-log); and jwt-auth alone with its verified-token cache off (`portcullis-jwt-cold`: every
request verifies the token's RS256 signature, through the host's `signatures` capability),
whose added cost is over the no-plugin row.

Portcullis runs with `[runtime] instance_slots = 8`: wasmtime's pooling allocator reserves its
whole pool of linear memories up front (about 16 TiB of address space for the default 4,096
instances), which valgrind 3.19 refuses to map ("failed to create memory pool mapping").

With `--guests N`, Portcullis runs with `PORTCULLIS_WASM_PERFMAP=1` and the N plugin functions
with the most instructions per request are listed for each Portcullis contender: callgrind names
compiled wasm by address only, and wasmtime's perf map (`/tmp/perf-PID.map`) names the address
ranges. Functions of the same name in different plugins (`dlmalloc`, `cabi_realloc`) are summed.

Usage: bench/callgrind.py [--requests N] [--only NAME,...] [--guests N]; needs valgrind, nginx, wrk, the
components (`cargo build --profile plugin --target wasm32-wasip2 ...` as bench/run does), and
`cargo build --release --workspace --examples` (the gateway and the yardstick: the release
profile, whose functions keep their names; see `GATEWAY`). Prints a Markdown table.
"""

import argparse
import bisect
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# The release build, not bench/run's dist build: whole-program LTO inlines the functions this
# script counts by name (the allocator shims, wasmtime's lowering and call entry points), so
# under it allocations and crossings read 0. The dist build runs about 8-9% fewer instructions
# per request (docs/BENCHMARKS.md, entry 38); judge a change before and after in one profile.
GATEWAY = harness.ROOT / "target/release/portcullis"
YARDSTICK = harness.ROOT / "target/release/examples/yardstick"
PORT, ADMIN = 18090, 19090
ALLOC = ("__rust_alloc", "__rust_alloc_zeroed", "__rust_realloc")
# The wasmtime 48 function every crossing of one kind goes through, in the table's order:
# a string or list lowered into the guest (its `cabi_realloc` call), a guest call of a host
# function, a host call of a guest export.
CROSSINGS = ("wasmtime::runtime::component::func::options::LowerContext<T>::realloc",
             "wasmtime::runtime::component::func::host::HostFn::entrypoint",
             "wasmtime::runtime::component::func::typed::TypedFunc<Params,Return>::call_impl")
# 8 instance slots: about 32 GiB of address space for linear memories instead of 16 TiB (16
# slots, 64 GiB, is more than valgrind 3.19 maps).
SMALL_POOL = "\n[runtime]\ninstance_slots = 8\n"


def wrk_requests(url: str, connections: int, seconds: int, token: str) -> int:
    """Sends the harness' request for `seconds` on `connections`; returns how many completed."""
    script = harness.post_script(token)
    out = subprocess.run(["taskset", "-c", harness.CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"callgrind: {url} answered non-2xx responses\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1))


def parse(dump: Path) -> tuple[int, int, list[int]]:
    """Total Ir, allocation calls and calls of each of `CROSSINGS` in one callgrind dump
    (--dump-instr=no, --compress-strings=no)."""
    total, allocs, crossings, target = 0, 0, [0] * len(CROSSINGS), None
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            total = max(total, int(line.split()[1]))
        elif line.startswith("cfn="):
            target = line[4:].split(" ", 1)[-1] if line[4:].startswith("(") else line[4:]
        elif line.startswith("calls=") and target is not None:
            calls = int(line.split()[0][6:])
            name = target.strip()
            # Rust 1.95 names the allocator shims `__rustc::__rust_alloc`.
            if name.removeprefix("__rustc::") in ALLOC:
                allocs += calls
            elif name in CROSSINGS:
                crossings[CROSSINGS.index(name)] += calls
            target = None
    return total, allocs, crossings


def guest_functions(dumps: list[Path], served: int, top: int) -> list[tuple[str, float]]:
    """The `top` plugin functions by instructions per request in `dumps` (callgrind's self
    cost of each anonymous JIT address, named by the perf map wasmtime wrote for that process),
    names demangled and without their hashes."""
    totals: collections.Counter = collections.Counter()
    # One process writes several dumps (before instrumentation was on, and after): its map is
    # read once for all of them.
    maps: dict[Path, list[tuple[int, int, str]]] = {}
    for dump in dumps:
        perf_map = Path(f"/tmp/perf-{dump.name.split('.')[2]}.map")
        if perf_map not in maps:
            if not perf_map.exists():
                continue
            maps[perf_map] = sorted(
                (int(a, 16), int(size, 16), n) for a, size, n in
                (line.split(" ", 2) for line in perf_map.read_text().splitlines() if line.count(" ") >= 2))
        ranges = maps[perf_map]
        starts = [r[0] for r in ranges]
        # A dump of the instrumentation-off part has no events, and callgrind_annotate fails on it.
        out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", str(dump)],
                             capture_output=True, text=True).stdout
        for m in re.finditer(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\?\?\?:0x([0-9a-f]+) ", out, re.M):
            address = int(m.group(2), 16)
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and address < ranges[i][0] + ranges[i][1]:
                # "wasm[0]::function[286]::_ZN8jwt_auth…": the symbol after the index.
                totals[ranges[i][2].split("::", 2)[-1]] += int(m.group(1).replace(",", ""))
    # Read once: a later process with the same PID would otherwise append to it.
    for perf_map in maps:
        perf_map.unlink()
    names = list(totals)
    plain = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    merged: collections.Counter = collections.Counter()
    for mangled, name in zip(names, plain if len(plain) == len(names) else names):
        if name.startswith("_ZN"):
            name = demangle_truncated(name)
        name = re.sub(r"::h[0-9a-f]{16}$", "", re.sub(r"\[[0-9a-f]{16}\]", "", name))
        merged[name] += totals[mangled]
    return [(name, ir / served) for name, ir in merged.most_common(top)]


LEGACY_ESCAPES = {"$LT$": "<", "$GT$": ">", "$u20$": " ", "$C$": ",", "$RF$": "&", "$BP$": "*", "$u7b$": "{",
                  "$u7d$": "}", "$u27$": "'", "$u5b$": "[", "$u5d$": "]", "$u3b$": ";", "$u21$": "!", "$SP$": "@"}


def demangle_truncated(name: str) -> str:
    """A legacy Rust symbol (`_ZN…E`) that c++filt left alone because wasmtime's perf map cut it
    short: its path segments as far as they go, the cut one ending in `…`."""
    parts, rest = [], name[3:]
    while m := re.match(r"(\d+)", rest):
        length, rest = int(m.group(1)), rest[m.end():]
        segment, rest = rest[:length], rest[length:]
        if re.fullmatch(r"h[0-9a-f]{16}", segment):
            break
        if segment.startswith("_$"):  # an identifier starting with an escape gets a `_`
            segment = segment[1:]
        for escape, char in LEGACY_ESCAPES.items():
            segment = segment.replace(escape, char)
        parts.append(segment.replace("..", "::") + ("…" if len(segment) < length else ""))
    return "::".join(parts) or name


def measure(name: str, argv: list[str], env: dict, cwd: Path | None, url: str, token: str,
            requests: int, guests: int = 0) -> tuple[float, float, list[float], list[tuple[str, float]]]:
    out = harness.WORK / f"{name}.callgrind"
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no", "--compress-strings=no",
             "--compress-pos=no", f"--callgrind-out-file={out}.%p", *argv]
    server = harness.Server(name, grind, PORT, harness.SERVER_CORE, env=env, cwd=cwd)
    try:
        pid = server.proc.pid
        wrk_requests(url, 4, 5, token)  # warm-up, uninstrumented
        subprocess.run(["callgrind_control", "--instr=on", str(pid)], check=True, capture_output=True)
        # Under callgrind a request takes ~50 times longer: size the run to about `requests`.
        served = 0
        started = time.time()
        while served < requests and time.time() - started < 600:
            served += wrk_requests(url, 4, 10, token)
        subprocess.run(["callgrind_control", "--instr=off", str(pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
        time.sleep(1)
        dumps = sorted(harness.WORK.glob(f"{name}.callgrind.*"))
        ir, allocs, crossings = 0, 0, [0] * len(CROSSINGS)
        for dump in dumps:
            a, b, c = parse(dump)
            ir, allocs, crossings = ir + a, allocs + b, [x + y for x, y in zip(crossings, c)]
        hot = guest_functions(dumps, served, guests) if guests else []
        return ir / served, allocs / served, [c / served for c in crossings], hot
    finally:
        server.stop()


def single_process(conf: Path) -> Path:
    """The nginx configuration without a master process: callgrind follows the process it
    started, and a forked worker would go uncounted."""
    conf.write_text(conf.read_text().replace("worker_processes 1;", "worker_processes 1;\nmaster_process off;"))
    return conf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per contender, about")
    parser.add_argument("--only", default="", help="comma-separated contender names")
    parser.add_argument("--guests", type=int, default=0, help="list this many plugin functions per contender")
    args = parser.parse_args()
    harness.WORK = Path(tempfile.mkdtemp(prefix="portcullis-callgrind-"))
    token = harness.mint_token()
    url = f"http://127.0.0.1:{PORT}/api/orders"
    portcullis_env = {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"}
    if args.guests:
        portcullis_env["PORTCULLIS_WASM_PERFMAP"] = "1"
    contenders: list[tuple[str, str, list[str], dict, Path | None]] = [
        ("nginx", "nginx reverse proxy", ["nginx", "-c", str(single_process(harness.nginx_conf(PORT, proxy=True)))], {}, None),
        ("yardstick-pooled", "hyper yardstick, pooled client",
         [str(YARDSTICK), f"127.0.0.1:{PORT}", f"127.0.0.1:{harness.UPSTREAM_PORT}", "pooled"], {}, None),
        ("yardstick-own", "hyper yardstick, an upstream connection per client connection",
         [str(YARDSTICK), f"127.0.0.1:{PORT}", f"127.0.0.1:{harness.UPSTREAM_PORT}", "own"], {}, None),
        ("yardstick-affine", "hyper yardstick, connection-affine (one task drives both)",
         [str(YARDSTICK), f"127.0.0.1:{PORT}", f"127.0.0.1:{harness.UPSTREAM_PORT}", "affine"], {}, None),
    ]
    # Steps are added one at a time in the chain's order (rbac needs jwt-auth's identity, or it
    # answers 403): each row's cost over the row before it is that step's.
    chain = ["jwt", "rbac", "ratelimit", "validate", "audit"]
    labels = {"jwt": "+ jwt-auth (cached)", "rbac": "+ rbac", "ratelimit": "+ rate-limit",
              "validate": "+ request-validation", "audit": "+ audit-log (the five-step chain)"}
    for name, label, steps in [("none", "Portcullis, no plugins", [])] + [
            (step, labels[step], chain[:i + 1]) for i, step in enumerate(chain)]:
        # A small instance pool: the default one reserves more address space than valgrind
        # can map (see the module's docstring).
        conf = harness.portcullis_conf(f"portcullis-{name}", PORT, ADMIN, steps, extra=SMALL_POOL)
        contenders.append((f"portcullis-{name}", label, [str(GATEWAY), "run", "--config", str(conf)],
                           portcullis_env, conf.parent))
    cold = harness.portcullis_conf("portcullis-jwt-cold", PORT, ADMIN, ["jwt"], extra=SMALL_POOL)
    harness.cold_tokens(cold)
    contenders.append(("portcullis-jwt-cold", "jwt-auth alone, cold token (cache off)",
                       [str(GATEWAY), "run", "--config", str(cold)], portcullis_env, cold.parent))
    only = {n for n in args.only.split(",") if n}
    upstream = harness.Server("upstream", ["nginx", "-c", str(harness.nginx_conf(harness.UPSTREAM_PORT, proxy=False))],
                              harness.UPSTREAM_PORT, harness.CLIENT_CORE)
    rows, guest_rows = {}, {}
    try:
        for name, label, argv, env, cwd in contenders:
            if only and name not in only:
                continue
            if name.startswith("portcullis-"):
                # Compile (or load from the component cache) natively first: Cranelift under
                # callgrind would take minutes.
                native = harness.Server(f"{name}-native", argv, PORT, harness.SERVER_CORE, env=env, cwd=cwd)
                native.stop()
                # With --guests it wrote a perf map too, which nothing reads.
                Path(f"/tmp/perf-{native.proc.pid}.map").unlink(missing_ok=True)
            print(f"callgrind: {name}", file=sys.stderr)
            *row, hot = measure(name, argv, env, cwd, url, token, args.requests, args.guests)
            rows[name] = (label, *row)
            if hot:
                guest_rows[name] = (label, hot)
            print(f"callgrind: {name}: {rows[name][1] / 1000:.1f} k instructions, {rows[name][2]:.1f} allocations",
                  file=sys.stderr)
    finally:
        upstream.stop()
    nginx = rows.get("nginx")
    print("| contender | instructions / request | × nginx | allocations / request | crossings / request "
          "(lowered strings and lists, host calls, export calls) | added by the step |")
    print("|---|---|---|---|---|---|")
    before = None
    for name, (label, ir, allocs, crossings) in rows.items():
        ratio = f"{ir / nginx[1]:.2f}" if nginx and nginx[1] else "—"
        added = "—"
        if name == "portcullis-jwt-cold" and "portcullis-none" in rows:
            before = rows["portcullis-none"][1:]
        if name.startswith("portcullis-") and name != "portcullis-none" and before:
            more = " / ".join(f"+{c - b:.1f}" for c, b in zip(crossings, before[2]))
            added = (f"+{(ir - before[0]) / 1000:.1f} k instructions, +{allocs - before[1]:.1f} allocations, "
                     f"{more} crossings")
        if name.startswith("portcullis-"):
            before = (ir, allocs, crossings)
        counted = " / ".join(f"{c:.1f}" for c in crossings)
        print(f"| {label} | {ir / 1000:.1f} k | {ratio} | {allocs:.1f} | {counted} | {added} |")
    for label, hot in guest_rows.values():
        print(f"\n{label}, plugin functions:\n\n| function | instructions / request |\n|---|---|")
        for function, ir in hot:
            print(f"| `{function}` | {ir / 1000:.2f} k |")

if __name__ == "__main__":
    main()
