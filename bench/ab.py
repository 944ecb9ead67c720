#!/usr/bin/env python3
"""Before and after: two Portcullis builds side by side with nginx, in one run, on the harness'
setup (bench/harness.py: the same upstream, request, pinning and wrk settings).

A change on the request path is judged by its effect on the ratio to nginx in the same round,
not by absolute numbers from runs on different days or machines. Contenders: nginx as a proxy,
then BEFORE and AFTER each with no plugins and with the harness' five-step chain; rounds are
interleaved and reverse order every round. Reported: req/s median (min–max), the ratio to nginx
per round (median, min–max), and server CPU µs per request with its user time (the kernel's
share, the loopback TCP work, is about the same for every contender: a change on the request
path shows in the user time).

Usage: bench/ab.py BEFORE_BINARY [AFTER_BINARY] [--before-plugins DIR] [--rounds N] [--duration S];
AFTER defaults to target/pgo/dist/portcullis. Both builds load the components of
target/wasm32-wasip2/plugin unless `--before-plugins` names another directory for BEFORE (the
components of another commit or profile, e.g. built with `CARGO_TARGET_DIR=/tmp/before-target`). Build BEFORE from another commit, for example:
`git worktree add /tmp/before COMMIT && mkdir -p /tmp/before/target/bench-tools/bin && cp
target/bench-tools/bin/oha /tmp/before/target/bench-tools/bin/ && (cd /tmp/before && bench/pgo) && cp
/tmp/before/target/pgo/dist/portcullis /tmp/portcullis-before` (its own target directory: a cold
build, about 25 minutes; bench/pgo's training needs oha in that tree's target/bench-tools),
then `bench/pgo` in this tree. When the contract changed between the two, BEFORE needs that
commit's components: `cargo build --profile plugin --target wasm32-wasip2 -p jwt-auth -p rbac -p
rate-limit -p request-validation -p audit-log` in the worktree, and `--before-plugins
/tmp/before/target/wasm32-wasip2/plugin`. Needs what bench/run installs and builds (nginx, wrk, the components).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CHAIN = ["jwt", "rbac", "ratelimit", "validate", "audit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default=str(harness.PORTCULLIS))
    parser.add_argument("--before-plugins", type=Path, help="components for BEFORE (default: this tree's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    args = parser.parse_args()

    def add(servers: dict, env: dict) -> None:
        port = 18183
        for build, binary in [("before", args.before), ("after", args.after)]:
            for variant, steps in [("no plugins", []), ("chain", CHAIN)]:
                name = f"{build}, {variant}"
                conf = harness.portcullis_conf(f"{build}-{len(steps)}", port, port + 1000, steps)
                if build == "before" and args.before_plugins:
                    conf.write_text(conf.read_text().replace(str(harness.PLUGINS), str(args.before_plugins.resolve())))
                servers[name] = harness.Server(name, [binary, "run", "--config", str(conf)], port, harness.SERVER_CORE,
                                               env=env, cwd=conf.parent)
                port += 1

    harness.side_by_side("portcullis-ab-", add, args.rounds, args.duration, "ab")


if __name__ == "__main__":
    main()
