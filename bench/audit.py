#!/usr/bin/env python3
"""What the audit step costs, and what signing and fail-closed recording add: one Portcullis
build serving the chain `jwt` alone, then `jwt, audit` with the audit sink as it ships, signed
(Ed25519 checkpoints every second, exported to a file), fail-closed (each record written before
its response is sent), and fail-closed with `audit_fsync = "always"` (written and synced),
side by side with nginx, interleaved rounds on the harness' setup (bench/harness.py). Reported
as in bench/ab.py; a variant's cost is the difference in server CPU µs per request (and, for the
synced one, the wait for the disk shows in its requests per second rather than its CPU).

Usage: bench/audit.py [BINARY] [--rounds N] [--duration S]; BINARY defaults to
target/pgo/dist/portcullis. Needs what bench/run installs and builds.
"""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SIGNING = ('\n[secret.audit-signing]\nfile = "audit.key"\n'
           '\n[plugin.audit.audit_signing]\nalgorithm = "ed25519"\nkey = "audit-signing"\n'
           'checkpoint_file = "audit.checkpoints.jsonl"\n')
AUDIT_STEP = '\n[[route.chain]]\nplugin = "audit"\n'


def main() -> None:
    args = harness.variant_args(__doc__)

    variants = [
        ("jwt", ["jwt"], None),
        ("jwt, audit", ["jwt", "audit"], None),
        ("jwt, audit signed", ["jwt", "audit"], "signed"),
        ("jwt, audit fail-closed", ["jwt", "audit"], "fail-closed"),
        ("jwt, audit fail-closed fsync", ["jwt", "audit"], "fsync"),
    ]

    def add(servers: dict, env: dict) -> None:
        for index, (name, steps, variant) in enumerate(variants):
            port = 18183 + index
            conf = harness.portcullis_conf(f"audit-{index}", port, port + 1000, steps)
            text = conf.read_text()
            if variant == "signed":
                subprocess.run([args.binary, "audit", "keygen", str(conf.parent / "audit")], check=True,
                               capture_output=True)
                # TOML tables after the plugin's own: the routes come last in the file.
                head, routes = text.split("\n[[route]]", 1)
                text = head + SIGNING + "\n[[route]]" + routes
            if variant in ("fail-closed", "fsync"):
                text = text.replace(AUDIT_STEP, AUDIT_STEP + 'failure_policy = "fail-closed"\n', 1)
            if variant == "fsync":
                text = text.replace('audit_file = "audit.jsonl"\n', 'audit_file = "audit.jsonl"\naudit_fsync = "always"\n', 1)
            conf.write_text(text)
            servers[name] = harness.Server(name, [args.binary, "run", "--config", str(conf)], port, harness.SERVER_CORE,
                                           env=env, cwd=conf.parent)

    harness.side_by_side("portcullis-audit-", add, args.rounds, args.duration, "audit")


if __name__ == "__main__":
    main()
