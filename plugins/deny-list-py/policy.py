"""The deny list's policy, free of component imports so `python3 -m unittest` can run it.

Configuration (JSON), every list optional:
  methods      request methods refused, e.g. ["TRACE", "CONNECT"] (case-insensitive)
  paths        path prefixes refused, matched on whole segments: "/admin" refuses "/admin"
               and "/admin/x", not "/administrator"
  client_ips   client addresses refused: IPs or CIDR blocks, IPv4 or IPv6
  user_agents  substrings of `user-agent` refused (case-insensitive), e.g. ["sqlmap"]
  status       status of the local response, 403 (default) or 404 to hide what exists
"""

import ipaddress
import json
from dataclasses import dataclass, field
from typing import List, Optional


class ConfigError(Exception):
    """A refused configuration: `pointer` is an RFC 6901 JSON pointer into it."""

    def __init__(self, pointer: str, message: str):
        super().__init__(message)
        self.pointer = pointer
        self.message = message


@dataclass
class Rules:
    methods: List[str] = field(default_factory=list)
    paths: List[str] = field(default_factory=list)
    networks: list = field(default_factory=list)
    user_agents: List[str] = field(default_factory=list)
    status: int = 403


KNOWN = ("methods", "paths", "client_ips", "user_agents", "status")


def _strings(doc: dict, key: str) -> List[str]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"/{key}", "a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"/{key}/{i}", "a non-empty string")
    return value


def parse_config(text: str) -> Rules:
    """Parses and checks configuration text; raises ConfigError."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError("", f"not JSON: {e}")
    if not isinstance(doc, dict):
        raise ConfigError("", "expected an object")
    for key in doc:
        if key not in KNOWN:
            raise ConfigError(f"/{key}", "unknown field; expected one of " + ", ".join(KNOWN))
    paths = _strings(doc, "paths")
    for i, p in enumerate(paths):
        if not p.startswith("/"):
            raise ConfigError(f"/paths/{i}", "a path prefix starting with `/`")
    networks = []
    for i, cidr in enumerate(_strings(doc, "client_ips")):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as e:
            raise ConfigError(f"/client_ips/{i}", str(e))
    status = doc.get("status", 403)
    if status not in (403, 404):
        raise ConfigError("/status", "403 or 404")
    return Rules(
        methods=[m.upper() for m in _strings(doc, "methods")],
        paths=[p.rstrip("/") or "/" for p in paths],
        networks=networks,
        user_agents=[a.lower() for a in _strings(doc, "user_agents")],
        status=status,
    )


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def denial(rules: Rules, method: str, path: str, client_ip: str, user_agent: Optional[str]) -> Optional[str]:
    """The rule that refuses this request (`method`, `path`, `client-ip`, `user-agent`), or None."""
    if method.upper() in rules.methods:
        return "method"
    if any(_under(path, p) for p in rules.paths):
        return "path"
    if rules.networks:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            address = None
        if address is not None and any(address in n for n in rules.networks):
            return "client-ip"
    agent = (user_agent or "").lower()
    if any(a in agent for a in rules.user_agents):
        return "user-agent"
    return None


def problem(rules: Rules, rule: str) -> bytes:
    """The RFC 9457 problem document for a refusal by `rule`."""
    title = "Forbidden" if rules.status == 403 else "Not Found"
    detail = f"Refused by the `{rule}` rule of the deny list." if rules.status == 403 else "No such resource."
    return json.dumps({"type": "about:blank", "title": title, "status": rules.status, "detail": detail}).encode()
