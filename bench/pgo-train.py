#!/usr/bin/env python3
"""The training run of the profile-guided build (bench/pgo): an instrumented gateway serves a
mix of requests unlike the benchmark's, so that the profile describes a gateway at work, not
the one request bench/run sends.

The gateway runs the quickstart's configuration (examples/quickstart/portcullis.toml: its three
routes, its tokens, its JSON Schema), with only what a test bench must change: its ports, the
upstream (the harness' nginx upstream instead of the demo echo server), absolute paths, and the
rate limits raised so that most requests reach the upstream. The mix, cycled on every
connection: GET /public/hello (the audit-only route), GET /api/orders/1 with a reader's and an
admin's token (four-step chain, no body), POST /api/orders with a valid order (the five-step
chain), and the local responses: no token (401), a reader's DELETE (403), an invalid order
(422). Then the same mix over one request per connection (`Connection: close`), for the accept
and connection set-up path; over TLS (a second listener with a throw-away self-signed P-256
certificate); and over HTTP/2 with TLS (oha, two requests of the mix), so that code the
benchmark never runs is not laid out as cold. The benchmark's own request (its token, its
headers, its body) is not in the mix.

Usage: bench/pgo-train.py BINARY [--seconds S] [--oha PATH]; BINARY is built with
`-Cprofile-generate`, and writes its profile when it exits (SIGTERM, as here). Needs nginx,
wrk, openssl, oha and the components (what bench/run installs and builds).
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

QUICKSTART = harness.ROOT / "examples/quickstart"
PORT, ADMIN, TLS_PORT = 18390, 19390, 18391


def config(work: Path) -> Path:
    """The quickstart's configuration rewritten to run beside the harness (see the docstring)."""
    text = (QUICKSTART / "portcullis.toml").read_text()
    text = text.replace('"127.0.0.1:8080"', f'"127.0.0.1:{PORT}"').replace('"127.0.0.1:9901"', f'"127.0.0.1:{ADMIN}"')
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem"), "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls = (f'\n[[listener]]\naddress = "127.0.0.1:{TLS_PORT}"\n[listener.tls]\n'
           f'certificates = [{{ cert_file = "{work / "cert.pem"}", key_file = "{work / "key.pem"}" }}]\n')
    text = text.replace("\n[admin]", tls + "\n[admin]", 1)
    text = text.replace('"127.0.0.1:8081"', f'"127.0.0.1:{harness.UPSTREAM_PORT}"')
    text = text.replace('"../../target/quickstart-audit.jsonl"', f'"{work / "audit.jsonl"}"')
    text = text.replace('"../../', f'"{harness.ROOT}/')
    text = re.sub(r'"\$file" = "((?:keys|schemas)/[^"]+)"', lambda m: f'"$file" = "{QUICKSTART / m.group(1)}"', text)
    text = re.sub(r"requests = \d+", "requests = 1000000000", text)
    conf = work / "portcullis.toml"
    conf.write_text(text)
    return conf


def mix_script(work: Path, close: bool) -> Path:
    """A wrk script cycling through the mix (weights by repetition)."""
    reader = (QUICKSTART / "keys/demo.jwt").read_text().strip()
    admin = (QUICKSTART / "keys/admin.jwt").read_text().strip()
    order = '{"item": "washer", "quantity": 12}'
    requests = [
        ("GET", "/public/hello", {}, None),
        ("GET", "/public/hello", {}, None),
        ("GET", "/api/orders/1", {"Authorization": f"Bearer {reader}"}, None),
        ("GET", "/api/orders/1", {"Authorization": f"Bearer {admin}", "Accept": "application/json"}, None),
        ("POST", "/api/orders", {"Authorization": f"Bearer {reader}", "Content-Type": "application/json"}, order),
        ("POST", "/api/orders", {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}, order),
        ("POST", "/api/orders", {"Content-Type": "application/json"}, order),
        ("DELETE", "/api/orders/1", {"Authorization": f"Bearer {reader}"}, None),
        ("POST", "/api/orders", {"Authorization": f"Bearer {reader}", "Content-Type": "application/json"},
         '{"item": "washer", "quantity": 0}'),
    ]

    def lua(value: str | None) -> str:
        return "nil" if value is None else "[[" + value + "]]"

    lines = ["local reqs = {}"]
    for method, path, headers, body in requests:
        # wrk.format adds no Host of its own when given headers (HTTP/1.1 requires one: 400).
        headers = {"Host": f"127.0.0.1:{PORT}", "User-Agent": "portcullis-pgo-train", **headers}
        if close:
            headers = {**headers, "Connection": "close"}
        fields = ", ".join(f'["{k}"] = {lua(v)}' for k, v in headers.items())
        lines.append(f'reqs[#reqs + 1] = wrk.format("{method}", "{path}", {{{fields}}}, {lua(body)})')
    lines += ["local i = 0", "request = function()", "  i = i % #reqs + 1", "  return reqs[i]", "end"]
    script = work / ("mix-close.lua" if close else "mix.lua")
    script.write_text("\n".join(lines) + "\n")
    return script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary")
    parser.add_argument("--seconds", type=int, default=20, help="seconds of the keep-alive mix")
    parser.add_argument("--oha", default=str(harness.ROOT / "target/bench-tools/bin/oha"))
    args = parser.parse_args()
    harness.WORK = work = Path(tempfile.mkdtemp(prefix="portcullis-pgo-train-"))
    upstream = harness.Server("upstream", ["nginx", "-c", str(harness.nginx_conf(harness.UPSTREAM_PORT, proxy=False))],
                              harness.UPSTREAM_PORT, harness.CLIENT_CORE)
    try:
        gateway = harness.Server("gateway", [args.binary, "run", "--config", str(config(work))], PORT,
                                 harness.SERVER_CORE, env={"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"})
        try:
            quarter = max(args.seconds // 4, 1)
            plain, tls = f"http://127.0.0.1:{PORT}/", f"https://127.0.0.1:{TLS_PORT}/"
            for name, url, close, connections, seconds in [("keep-alive", plain, False, 32, args.seconds),
                                                           ("one request per connection", plain, True, 8, quarter),
                                                           ("TLS, keep-alive", tls, False, 16, quarter)]:
                out = subprocess.run(
                    ["taskset", "-c", harness.CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                     "-s", str(mix_script(work, close)), url], capture_output=True, text=True, check=True).stdout
                rate = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
                non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                print(f"pgo-train: {name}: {rate} req/s, {non2xx.group(1) if non2xx else 0} local responses "
                      "(401, 403, 422 by design)", flush=True)
            admin = (QUICKSTART / "keys/admin.jwt").read_text().strip()
            for method, path, extra in [("GET", "/api/orders/1", []),
                                        ("POST", "/api/orders", ["-H", "content-type: application/json",
                                                                 "-d", '{"item": "washer", "quantity": 12}'])]:
                subprocess.run(["taskset", "-c", harness.CLIENT_CORE, args.oha, "--no-tui", "--http2", "--insecure",
                                "-c", "4", "-p", "8", "-z", f"{quarter}s", "-m", method,
                                "-H", f"authorization: Bearer {admin}", *extra, f"{tls}{path.lstrip('/')}"],
                               check=True, capture_output=True)
                print(f"pgo-train: HTTP/2 over TLS, {method} {path}", flush=True)
        finally:
            gateway.stop()
    finally:
        upstream.stop()
    if gateway.proc.returncode != 0:
        raise SystemExit(f"pgo-train: the gateway exited with {gateway.proc.returncode}; see {work}/gateway.log")
    # Kept only when the run failed: the training's audit file alone is some 650 MB.
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
