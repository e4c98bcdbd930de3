"""The typed host model. Attribute names mirror the YAML keys of hosts/*.yaml exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Host:
    hostname: str
    domain: str
    role: str
    timezone: str
    locale: str
    source_date_epoch: int
    keyboard_layout: str = "us"
    authoritative_for_data: bool = False  # seed: "explicitly not authoritative for data"
    # How the machine boots: the storage layout (ESP or bios_grub) and every VM boot follow it.
    firmware: Literal["uefi", "bios"] = "uefi"


@dataclass(frozen=True)
class Iso:
    name: str
    url: str
    sha256: str
    sha256sums_url: str | None = None


@dataclass(frozen=True)
class Os:
    release: str
    codename: str
    iso: Iso
    distribution: Literal["ubuntu"] = "ubuntu"
    install_source: str = "ubuntu-server-minimal"
    kernel_package: str = "linux-generic"
    kernel_cmdline: tuple[str, ...] = ()
    host_serial_console: str | None = None  # the installed host's serial console (e.g. BMC SOL), or none
    updates: Literal["security", "all"] = "security"


@dataclass(frozen=True)
class DiskMatch:
    """How the installer finds a disk: exactly one of serial (+ bus), id_serial or wwn.

    See builder/disks.py for what each renders to and why it selects exactly that disk.
    """

    serial: str | None = None  # short serial: drive label, `lsblk -o SERIAL`, udev ID_SERIAL_SHORT (<= 20)
    bus: Literal["sata", "nvme", "virtio", "scsi"] | None = None  # how the disk is attached; with serial
    id_serial: str | None = None  # the exact udev ID_SERIAL (`udevadm info -q property -n /dev/X`)
    wwn: str | None = None  # `lsblk -o WWN` of a SCSI/SAS disk whose ID_SERIAL is 3<wwn>


@dataclass(frozen=True)
class Disk:
    match: DiskMatch
    filesystem: Literal["ext4", "xfs"] = "ext4"
    mountpoint: str | None = None
    pressure_percent: int = 85  # scratch-disk-pressure alert: usage above this (builder verify --only health)


@dataclass(frozen=True)
class Storage:
    os_disk: Disk
    scratch: Disk | None = None


@dataclass(frozen=True)
class Interface:
    vlan: int
    purpose: Literal["services", "management"]
    mac: str
    name: str
    dhcp: bool
    subnet: str
    tagged: bool = False
    gateway: str | None = None
    address: str | None = None  # CIDR, for static addressing
    reserved_address: str | None = None  # the address a DHCP reservation hands out

    @property
    def ip(self) -> str | None:
        """The address the host is expected to have on this NIC (static or reserved)."""
        if self.address:
            return self.address.split("/")[0]
        return self.reserved_address


@dataclass(frozen=True)
class Firewall:
    enforced_by: str = "cerberus"
    denied_vlans: tuple[str, ...] = ()


@dataclass(frozen=True)
class Network:
    default_route: str
    interfaces: dict[str, Interface]
    firewall: Firewall = field(default_factory=Firewall)
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    ssh_authorized_keys: tuple[str, ...] = ()
    gecos: str = ""
    groups: tuple[str, ...] = ()
    sudo: str | None = None
    shell: str = "/bin/bash"
    password_hash: str | None = None
    password_file: str | None = None
    password: str | None = None  # never allowed: present only to give a clear error


@dataclass(frozen=True)
class SshCrypto:
    kex: tuple[str, ...]
    ciphers: tuple[str, ...]
    macs: tuple[str, ...]
    host_key_algorithms: tuple[str, ...]
    min_moduli_bits: int = 3072


@dataclass(frozen=True)
class Ssh:
    listen_on: str
    permit_root_login: bool
    password_authentication: bool
    crypto: SshCrypto
    port: int = 22
    max_auth_tries: int = 3
    allow_groups: tuple[str, ...] = ()
    allow_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class NfsMount:
    mountpoint: str
    export: str
    access: Literal["ro", "rw"]
    purpose: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Nfs:
    server: str
    version: str
    root: str
    mounts: tuple[NfsMount, ...]
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class AptRepo:
    url: str
    suite: str
    component: str
    key_file: str
    key_fingerprint: str


@dataclass(frozen=True)
class Apt:
    ubuntu_mirror: str
    docker: AptRepo
    nvidia: AptRepo
    ubuntu_security_mirror: str | None = None


@dataclass(frozen=True)
class Docker:
    packages: tuple[str, ...]
    data_root: str
    tcp_api: bool
    bind_published_ports_to: str
    version: str | None = None
    log_max_size: str = "50m"
    requires_mounts: tuple[str, ...] = ()
    group_gid: int = 2375  # fixed GID of the docker group, created before the packages


@dataclass(frozen=True)
class NvidiaDriver:
    """Ubuntu's driver branch as Canonical's signed prebuilt modules (no DKMS, so Secure Boot needs no MOK)."""

    branch: str  # e.g. "580-server": the suffix of nvidia-headless-no-dkms-<branch>
    version: str | None  # exact version of nvidia-headless-no-dkms-<branch> and nvidia-utils-<branch>
    kernel_flavour: str = "generic"  # linux-modules-nvidia-<branch>-<flavour>; os.kernel_package is linux-<flavour>
    hold: bool = True

    @property
    def package(self) -> str:
        """The driver's main package (what verify asks dpkg and apt about)."""
        return f"nvidia-headless-no-dkms-{self.branch}"

    @property
    def utils_package(self) -> str:
        return f"nvidia-utils-{self.branch}"

    @property
    def modules_package(self) -> str:
        """Signed prebuilt modules for the flavour's current kernel ABI: versioned like the kernel, not the driver."""
        return f"linux-modules-nvidia-{self.branch}-{self.kernel_flavour}"


@dataclass(frozen=True)
class ContainerToolkit:
    """NVIDIA's toolkit family, pinned as a whole at one version (its members depend on each other exactly)."""

    enabled: bool
    package: str = "nvidia-container-toolkit"
    version: str | None = None  # the whole family (builder.seed.packages.TOOLKIT_FAMILY) at this version


@dataclass(frozen=True)
class Nvidia:
    gpu: str
    driver: NvidiaDriver
    container_toolkit: ContainerToolkit


@dataclass(frozen=True)
class Virtualization:
    enabled: bool = False
    cpu_mode: str = "host-passthrough"
    cpu_overcommit: bool = False
    memory_overcommit: bool = False
    gpu_passthrough: bool = False
    memory_reserve_mib: int = 4096  # host memory no guest may take (memory overcommit disabled)


@dataclass(frozen=True)
class Monitoring:
    enabled: bool = False
    node_exporter: bool = True
    dcgm_exporter: bool = False
    dcgm_exporter_image: str = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.5-3.4.1-ubuntu22.04"
    alerts: tuple[str, ...] = ()
    scratch_usage_alert_percent: int = 85  # "Disk pressure on local scratch" fires above this
    health_interval_seconds: int = 60  # host-health timer period
    probe_timeout_seconds: int = 5  # an NFS mount or nvidia-smi slower than this counts as down


@dataclass(frozen=True)
class Features:
    virtualization: Virtualization = field(default_factory=Virtualization)
    monitoring: Monitoring = field(default_factory=Monitoring)


@dataclass(frozen=True)
class HostModel:
    schema_version: Literal[1]
    host: Host
    os: Os
    storage: Storage
    network: Network
    users: tuple[User, ...]
    ssh: Ssh
    nfs: Nfs
    apt: Apt
    docker: Docker
    nvidia: Nvidia
    features: Features = field(default_factory=Features)
    # Where the model came from; relative file references resolve against its folder.
    source_path: Path = field(default=Path("hosts/prometheus.yaml"), metadata={"internal": True})

    @property
    def base_dir(self) -> Path:
        return self.source_path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def admin(self) -> User:
        return self.users[0]

    @property
    def servers(self) -> Interface:
        return self.network.interfaces["servers"]

    @property
    def mgmt(self) -> Interface:
        return self.network.interfaces["mgmt"]
