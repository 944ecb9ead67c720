#!/usr/bin/env python3
"""The paths the profile-guided build was not trained on, dist against PGO: does the
profile-guided binary (bench/pgo) lose on the code its training run never exercised, which PGO
lays out as cold? Two such paths, each served by both builds on the harness' setup
(bench/harness.py: its request, pinning, wrk settings, nginx as the first contender):

- **upstream over TLS**: no plugins, the upstream an nginx on 127.0.0.1 serving the harness'
  static answer over TLS 1.3 (a throw-away CA and the P-256 leaf it signed, the CA trusted
  through `[upstream.app.tls] ca_file`), keep-alive; bench/pgo-train.py's upstream is plain HTTP;
- **`kv` on Redis**: jwt-auth and rate-limit with `[kv] backend = "redis"` at a
  `redis-server` of its own on a loopback port (one script call, `EVALSHA`,
  per request: the rate-limit step's throttle); the training uses the in-process store.

Reported: req/s (median, min–max), the ratio to nginx per round (nginx proxies the plain
upstream: a reference, not a like-for-like peer here), and server CPU µs per request, the
figure to compare between the two builds of one path.

Usage: bench/untrained.py [DIST_BINARY] [PGO_BINARY] [--rounds N] [--duration S]; defaults
target/dist/portcullis (`cargo build --profile dist -p portcullis`) and
target/pgo/dist/portcullis (bench/pgo). Needs what bench/run installs and builds, openssl and
redis-server.
"""

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

TLS_UPSTREAM_PORT, REDIS_PORT = 18443, 18380


def tls_upstream(work: Path) -> tuple[Path, Path]:
    """An nginx configuration answering the harness' static 200 over TLS on
    TLS_UPSTREAM_PORT, and the CA certificate to trust for it (a throw-away CA and a leaf it
    signed: webpki refuses a self-signed CA certificate as the server's own)."""
    ca, ca_key = work / "upstream-ca.pem", work / "upstream-ca-key.pem"
    cert, key, csr, ext = (work / f"upstream-{n}" for n in ("cert.pem", "key.pem", "csr.pem", "ext.cnf"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    for argv in (["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
                  "-subj", "/CN=portcullis bench CA"],
                 ["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"],
                 ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                  "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext)]):
        subprocess.run(argv, check=True, capture_output=True)
    conf = harness.nginx_conf(TLS_UPSTREAM_PORT, proxy=False)
    text = conf.read_text().replace(
        f"listen 127.0.0.1:{TLS_UPSTREAM_PORT} reuseport backlog=4096;",
        f"listen 127.0.0.1:{TLS_UPSTREAM_PORT} ssl reuseport backlog=4096;\n"
        f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n        ssl_protocols TLSv1.3;")
    if "ssl_certificate" not in text:
        raise SystemExit("bench/untrained: the harness' nginx configuration changed; cannot add TLS to it")
    conf.write_text(text)
    return conf, ca


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dist", nargs="?", default=str(harness.ROOT / "target/dist/portcullis"))
    parser.add_argument("pgo", nargs="?", default=str(harness.PORTCULLIS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    args = parser.parse_args()
    backends: list[harness.Server] = []

    def add(servers: dict, env: dict) -> None:
        nginx_tls, ca = tls_upstream(harness.WORK)
        backends.append(harness.Server("tls-upstream", ["nginx", "-c", str(nginx_tls)], TLS_UPSTREAM_PORT,
                                       harness.CLIENT_CORE))
        backends.append(harness.redis_server(REDIS_PORT))
        port = 18183
        for build, binary in [("dist", args.dist), ("pgo", args.pgo)]:
            tls = harness.portcullis_conf(f"{build}-tls", port, port + 1000, [])
            plain = f'endpoints = ["127.0.0.1:{harness.UPSTREAM_PORT}"]'
            text = tls.read_text()
            if plain not in text:
                raise SystemExit("bench/untrained: the harness' gateway configuration changed; cannot point it at TLS")
            tls.write_text(text.replace(plain, f'endpoints = ["127.0.0.1:{TLS_UPSTREAM_PORT}"]\n\n'
                                               f'[upstream.app.tls]\nca_file = "{ca}"\nserver_name = "localhost"'))
            redis = harness.portcullis_conf(f"{build}-redis", port + 1, port + 1001, ["jwt", "ratelimit"],
                                            extra=f'\n[kv]\nbackend = "redis"\nurl = "redis://127.0.0.1:{REDIS_PORT}/0"\n')
            for name, conf, p in [(f"{build}, upstream TLS", tls, port), (f"{build}, kv on Redis", redis, port + 1)]:
                servers[name] = harness.Server(name, [binary, "run", "--config", str(conf)], p, harness.SERVER_CORE,
                                               env=env, cwd=conf.parent)
            port += 2

    try:
        harness.side_by_side("portcullis-untrained-", add, args.rounds, args.duration, "untrained")
    finally:
        for backend in backends:
            backend.stop()


if __name__ == "__main__":
    main()
