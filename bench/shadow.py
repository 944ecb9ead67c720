#!/usr/bin/env python3
"""What a shadow step costs: one Portcullis build, the chain `jwt, rbac` against the same chain
with a stricter `rbac` step in shadow mode before the enforced one (it would refuse every
request, so each request also counts a disagreement), side by side with nginx, interleaved
rounds on the harness' setup (bench/harness.py). Reported as in bench/ab.py; the shadow step's
cost is the difference in server CPU µs per request.

Usage: bench/shadow.py [BINARY] [--rounds N] [--duration S]; BINARY defaults to
target/pgo/dist/portcullis. Needs what bench/run installs and builds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SHADOW = ('\n[[route.chain]]\nplugin = "rbac"\nmode = "shadow"\n'
          'config = { rules = [{ methods = ["GET", "POST"], path = "/api/**", roles = ["admin"] }] }\n')


def main() -> None:
    args = harness.variant_args(__doc__)

    def add(servers: dict, env: dict) -> None:
        for port, name, shadow in [(18183, "jwt, rbac", False), (18184, "jwt, shadow rbac, rbac", True)]:
            conf = harness.portcullis_conf(f"shadow-{shadow}", port, port + 1000, ["jwt", "rbac"])
            if shadow:
                text = conf.read_text()
                enforced = '\n[[route.chain]]\nplugin = "rbac"\n'
                conf.write_text(text.replace(enforced, SHADOW + enforced, 1))
            servers[name] = harness.Server(name, [args.binary, "run", "--config", str(conf)], port, harness.SERVER_CORE,
                                           env=env, cwd=conf.parent)

    harness.side_by_side("portcullis-shadow-", add, args.rounds, args.duration, "shadow")


if __name__ == "__main__":
    main()
