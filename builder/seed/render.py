"""Render stage: host model -> autoinstall seed + first-boot cloud-init seed (bytes, in memory).

Every rendered document is parsed back with yaml.safe_load before anyone may write it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import yaml
from passlib.hash import sha512_crypt

from builder import __version__
from builder.errors import BuilderError
from builder.model import HostModel, Interface, User
from builder.seed import hostconfig
from builder.seed.features import alert_rules_text, feature_files, feature_runcmd
from builder.seed.packages import DRIVER_SCRIPT, package_plan
from builder.seed.templating import environment, render_template

MANAGED = "Managed by builder (prometheus host model); do not edit by hand."
KEYRING_DIR = "/etc/apt/keyrings"
PUBKEY_ALGORITHMS = (
    "ssh-ed25519", "sk-ssh-ed25519@openssh.com", "rsa-sha2-512", "rsa-sha2-256",
)
SEED_FILES = (
    "autoinstall/user-data", "autoinstall/meta-data",
    "first-boot/user-data", "first-boot/meta-data", "first-boot/network-config",
)
ALERT_RULES_FILE = "monitoring/prometheus-host-alerts.yml"
SECRET_FILES = {"autoinstall/user-data", "first-boot/user-data"}  # may hold password hashes: mode 0600


def password_hash(model: HostModel, user: User) -> str | None:
    """A crypt(3) hash: given in the model, or derived from the secret file with a deterministic salt."""
    if user.password_hash:
        return user.password_hash
    if not user.password_file:
        return None
    secret = model.resolve(user.password_file).read_text(encoding="utf-8").rstrip("\n")
    if not secret:
        raise BuilderError(f"password file is empty: {model.resolve(user.password_file)}")
    digest = hmac.new(secret.encode(), f"{model.host.hostname}/{user.name}".encode(), hashlib.sha256).digest()
    salt = base64.b64encode(digest, altchars=b"./").decode()[:16]
    return sha512_crypt.using(salt=salt, rounds=656000).hash(secret)


def _l3(nic: Interface, is_default: bool, model: HostModel) -> dict[str, Any]:
    """Netplan layer-3 settings for one NIC."""
    out: dict[str, Any] = {"dhcp4": nic.dhcp, "dhcp6": False}
    if nic.dhcp:
        out["dhcp4-overrides"] = {"use-routes": is_default, "use-dns": is_default}
    else:
        out["addresses"] = [nic.address]
        if is_default and nic.gateway:
            out["routes"] = [{"to": "default", "via": nic.gateway}]
    if is_default and model.network.nameservers:
        out["nameservers"] = {"addresses": list(model.network.nameservers), "search": list(model.network.search)}
    out["link-local"] = []
    return out


def _with_extras(l3: dict[str, Any], key: str, nic: Interface, model: HostModel) -> dict[str, Any]:
    """Policy routing, dhcp-identifier, optional (builder.seed.hostconfig): lists extend, scalars set."""
    for k, v in hostconfig.netplan_extras(key, nic, model).items():
        l3[k] = [*l3.get(k, []), *v] if isinstance(v, list) else v
    return l3


def network_config(model: HostModel) -> dict[str, Any]:
    nics = []
    for key, nic in model.network.interfaces.items():
        is_default = key == model.network.default_route
        phys = f"{nic.name}p" if nic.tagged else nic.name
        nics.append({
            "key": key, "name": nic.name, "phys_name": phys, "mac": nic.mac.lower(), "vlan": nic.vlan,
            "tagged": nic.tagged, "l3": _with_extras(_l3(nic, is_default, model), key, nic, model),
        })
    return {"nics": nics, "vlans": [n for n in nics if n["tagged"]]}


def _packages(model: HostModel) -> list[Any]:
    """cloud-init's one-transaction `packages:` (the driver has its own step: builder.seed.packages)."""
    return list(package_plan(model, MANAGED).first_boot_packages)


def _mounts(model: HostModel) -> list[list[str]]:
    vers = model.nfs.version
    out = []
    for mt in model.nfs.mounts:
        opts = [mt.access, *model.nfs.options, *mt.options, f"vers={vers}", *hostconfig.nfs_mount_options()]
        out.append([f"{model.nfs.server}:{mt.export}", mt.mountpoint, "nfs", ",".join(dict.fromkeys(opts)), "0", "0"])
    return out


def _daemon_json(model: HostModel) -> str:
    d = model.docker
    cfg: dict[str, Any] = {
        "data-root": d.data_root,
        "ip": model.network.interfaces[d.bind_published_ports_to].ip,
        "log-driver": "json-file",
        "log-opts": {"max-size": d.log_max_size, "max-file": "3"},
        "live-restore": True,
    }
    if model.nvidia.container_toolkit.enabled:
        cfg["runtimes"] = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def _files(model: HostModel, env, ctx: dict[str, Any]) -> list[dict[str, str]]:
    files = [
        {"path": "/etc/ssh/sshd_config.d/01-prometheus-hardening.conf", "mode": "0600",
         "content": render_template(env, "cloud-init/files/sshd-hardening.conf.j2", ctx)},
        {"path": "/etc/docker/daemon.json", "mode": "0644", "content": _daemon_json(model)},
        *package_plan(model, MANAGED).files(),
    ]
    files += feature_files(model, env, ctx)
    if model.docker.requires_mounts:
        files.append({"path": "/etc/systemd/system/docker.service.d/10-requires-mounts.conf", "mode": "0644",
                      "content": render_template(env, "cloud-init/files/docker-requires-mounts.conf.j2", ctx)})
    for name, repo in (("docker", model.apt.docker), ("nvidia-container-toolkit", model.apt.nvidia)):
        if name.startswith("nvidia") and not model.nvidia.container_toolkit.enabled:
            continue
        keyring = f"{KEYRING_DIR}/{name}.asc"
        key = model.resolve(repo.key_file).read_text(encoding="utf-8")
        files.append({"path": keyring, "mode": "0644", "content": key})
        files.append({"path": f"/etc/apt/sources.list.d/{name}.list", "mode": "0644",
                      "content": render_template(env, "cloud-init/files/apt-source.list.j2",
                                                 {**ctx, "repo": repo, "keyring": keyring})})
    files += hostconfig.files(model, env, ctx)
    return files


def _runcmd(model: HostModel) -> list[list[str]]:
    bits = model.ssh.crypto.min_moduli_bits - 1  # moduli's 5th column is size - 1
    cmds = [
        ["sh", "-c", f"awk '$5 >= {bits}' /etc/ssh/moduli > /etc/ssh/moduli.new"
                     " && mv /etc/ssh/moduli.new /etc/ssh/moduli"],
    ]
    cmds += [
        ["systemctl", "daemon-reload"],
        *feature_runcmd(model),
        *hostconfig.runcmd(model),  # NFS/Docker start + retry, rpcbind masked, sshd (no ssh.socket restart)
        [DRIVER_SCRIPT],  # last: its own apt-get, holds, at most one reboot (builder.seed.packages)
    ]
    return cmds


def context(model: HostModel) -> dict[str, Any]:
    fqdn = f"{model.host.hostname}.{model.host.domain}" if model.host.domain else model.host.hostname
    ctx: dict[str, Any] = {
        "managed": MANAGED, "m": model, "host": model.host, "os": model.os, "apt": model.apt,
        "ssh": model.ssh, "docker": model.docker, "nvidia": model.nvidia, "fqdn": fqdn,
        "servers": model.servers, "mgmt": model.mgmt, "mgmt_ip": model.mgmt.ip,
        "users": model.users, "pubkey_algorithms": PUBKEY_ALGORITHMS,
    }
    ctx.update(network_config(model))
    return ctx


def _storage(model: HostModel) -> dict[str, Any]:
    from builder.model.disks import storage_config

    return storage_config(model)


def _parse_back(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BuilderError(f"rendered {name} is not valid YAML (template bug): {exc}") from None


def render_host(model: HostModel) -> dict[str, bytes]:
    """Render every seed file in memory. Keys are paths relative to artifacts/<hostname>/."""
    env = environment()
    ctx = context(model)
    ctx["password_hashes"] = {u.name: password_hash(model, u) for u in model.users}
    ctx["files"] = _files(model, env, ctx)
    ctx["packages"] = _packages(model)
    ctx["install_time_packages"] = list(package_plan(model, MANAGED).install_time)
    ctx["power_state"] = package_plan(model, MANAGED).power_state
    ctx["mounts"] = _mounts(model)
    ctx["runcmd"] = _runcmd(model)
    ctx["bootcmd"] = hostconfig.bootcmd(model)
    ctx["ubuntu_sources"] = render_template(env, "cloud-init/files/ubuntu-sources.list.j2", ctx)
    ctx["final_message"] = f"{model.host.hostname} first boot finished: cloud-init $VERSION after $UPTIME s"
    first_boot = render_template(env, "cloud-init/user-data.yaml.j2", ctx)
    first_boot_data = _parse_back("first-boot/user-data", first_boot)
    network_text = render_template(env, "cloud-init/network-config.yaml.j2", ctx)
    network = _parse_back("first-boot/network-config", network_text)
    ctx["instance_id"] = f"{model.host.hostname}-" + hashlib.sha256(first_boot.encode()).hexdigest()[:12]
    auto_ctx = {**ctx, "first_boot": first_boot_data, "network": network["network"], "storage": _storage(model),
                "late_commands": hostconfig.late_commands(model, env, ctx, ctx["files"]),
                "error_commands": hostconfig.error_commands(model)}
    out = {
        "autoinstall/user-data": render_template(env, "autoinstall/user-data.yaml.j2", auto_ctx),
        "autoinstall/meta-data": render_template(env, "autoinstall/meta-data.yaml.j2", ctx),
        "first-boot/user-data": first_boot,
        "first-boot/meta-data": render_template(env, "cloud-init/meta-data.yaml.j2", ctx),
        "first-boot/network-config": network_text,
    }
    if model.features.monitoring.alerts:
        # for an existing Prometheus to load (also installed on the host when monitoring is enabled)
        out[ALERT_RULES_FILE] = alert_rules_text(model, env, ctx)
    for name, text in out.items():
        data = _parse_back(name, text)
        if name.endswith("user-data") and not text.startswith("#cloud-config\n"):
            raise BuilderError(f"rendered {name} must start with '#cloud-config' (template bug)")
        if name == "autoinstall/user-data" and data["autoinstall"]["user-data"] != first_boot_data:
            raise BuilderError("embedded first-boot user-data differs from first-boot/user-data (template bug)")
    return {k: v.encode("utf-8") for k, v in out.items()}


def tool_version() -> str:
    return __version__
