#!/usr/bin/env python3
"""What a jwt-auth step costs for a token it has verified before and for one it has not: one
Portcullis build with no plugins, with jwt-auth and its verified-token cache (the harness'
setting: every request carries the same token, so every call after the first is a cache hit),
and with jwt-auth whose cache is off (`verified_cache_entries = 0`), side by side with nginx,
interleaved rounds on the harness' setup (bench/harness.py). Reported as in bench/ab.py.

The cache-off row is the cold-token case (a client whose token the instance has not seen:
a new token per request): every call parses the token, has its RS256 signature (RFC 7518
§3.3) verified by the host's `signatures` capability (natively, with ring; before
docs/BENCHMARKS.md entry 28, inside wasm) and checks its claims. A token that is really new also pays one
SipHash of the token and one cache insert, which the cache-off row leaves out; both are
hundreds of nanoseconds against a signature check's hundreds of microseconds.

Usage: bench/jwt.py [BINARY] [--rounds N] [--duration S]; BINARY defaults to
target/pgo/dist/portcullis. Needs what bench/run installs and builds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402



def main() -> None:
    args = harness.variant_args(__doc__)

    def add(servers: dict, env: dict) -> None:
        for port, name, steps, cold in [(18183, "no plugins", [], False),
                                        (18184, "jwt-auth, cached token", ["jwt"], False),
                                        (18185, "jwt-auth, cold token (cache off)", ["jwt"], True)]:
            conf = harness.portcullis_conf(f"jwt-{port}", port, port + 1000, steps)
            if cold:
                harness.cold_tokens(conf)
            servers[name] = harness.Server(name, [args.binary, "run", "--config", str(conf)], port, harness.SERVER_CORE,
                                           env=env, cwd=conf.parent)

    harness.side_by_side("portcullis-jwt-", add, args.rounds, args.duration, "jwt")


if __name__ == "__main__":
    main()
