"""Network checks: each NIC with its modelled name, MAC and address; default route only via SERVERS."""

from __future__ import annotations

import json
from typing import Any

from builder.model import HostModel, Interface
from builder.verify.core import SEED, Check, Context, Outcome, failed, passed

SEED_BY_ROLE = {"servers": "nic-servers", "mgmt": "nic-mgmt"}


def _links(ctx: Context) -> list[dict[str, Any]]:
    res = ctx.run("ip -j addr show")
    if not res.ok:
        raise RuntimeError(f"ip -j addr show failed: {res.brief()}")
    return json.loads(res.stdout or "[]")


def _v4(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet"]


def nic_check(role: str, iface: Interface) -> Check:
    want_ip = iface.ip
    want_desc = f"{iface.name} mac={iface.mac} addr={want_ip or 'any'} ({'dhcp' if iface.dhcp else 'static'})"

    def fn(ctx: Context) -> Outcome:
        links = _links(ctx)
        by_name = {ln.get("ifname"): ln for ln in links}
        link = by_name.get(iface.name)
        if link is None:
            other = next((ln for ln in links if (ln.get("address") or "").lower() == iface.mac.lower()), None)
            where = f"MAC {iface.mac} is named {other['ifname']!r}" if other else f"no NIC has MAC {iface.mac}"
            return failed(f"{role}: no interface named {iface.name!r}; {where}", expected=want_desc,
                          found=", ".join(f"{ln.get('ifname')}={ln.get('address')}" for ln in links))
        problems = []
        mac = (link.get("address") or "").lower()
        if mac != iface.mac.lower():
            problems.append(f"MAC {mac} (want {iface.mac})")
        if "UP" not in (link.get("flags") or []) or link.get("operstate") not in ("UP", "UNKNOWN"):
            problems.append(f"link is {link.get('operstate')}")
        addrs = _v4(link)
        ips = [a.split("/")[0] for a in addrs]
        if want_ip and want_ip not in ips:
            problems.append(f"address {', '.join(addrs) or 'none'} (want {want_ip})")
        if iface.address and iface.address not in addrs:
            problems.append(f"prefix of {', '.join(addrs) or 'none'} (want {iface.address})")
        if not addrs:
            problems.append("no IPv4 address")
        found = f"{iface.name} mac={mac} addr={','.join(addrs) or 'none'} state={link.get('operstate')}"
        if problems:
            return failed(f"{role} NIC {iface.name}: " + "; ".join(problems), expected=want_desc, found=found)
        return passed(f"{role}: {found}", found=found)

    return Check(f"network.nic.{role}", f"{role.upper()} NIC has the modelled name, MAC and address",
                 SEED[SEED_BY_ROLE.get(role, "nic-servers")], "ip -j addr show", want_desc, fn, family="network")


def default_route_check(model: HostModel) -> Check:
    role = model.network.default_route
    iface = model.network.interfaces[role]

    def fn(ctx: Context) -> Outcome:
        res = ctx.run("ip -j -4 route show default")
        if not res.ok:
            return failed(f"ip route failed: {res.brief()}")
        routes = json.loads(res.stdout or "[]")
        found = ", ".join(f"via {r.get('gateway', '-')} dev {r.get('dev')}" for r in routes) or "none"
        want = f"via {iface.gateway or '(DHCP)'} dev {iface.name} only"
        if not routes:
            return failed("no IPv4 default route", expected=want, found=found)
        wrong = [r for r in routes if r.get("dev") != iface.name]
        if wrong:
            return failed(f"default route via a non-{role.upper()} NIC: {found}", expected=want, found=found)
        if iface.gateway and any(r.get("gateway") != iface.gateway for r in routes):
            return failed(f"default gateway {found}", expected=want, found=found)
        return passed(f"default route {found}", found=found)

    return Check("network.default-route", f"default route only via {role.upper()}",
                 SEED["servers-runtime"], "ip -j -4 route show default", f"only via {iface.name}", fn,
                 family="network")


def network_checks(model: HostModel) -> list[Check]:
    return [nic_check(role, iface) for role, iface in model.network.interfaces.items()] + [
        default_route_check(model)
    ]
