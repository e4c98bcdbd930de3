"""The Atlas stand-in: nfs-ganesha (NFSv4 only, VFS FSAL) on 127.0.0.1, one pseudo-root export.

The guest reaches it through QEMU's guestfwd (`cmd:nc 127.0.0.1 PORT`). The export allows
read-write; read-only intent comes from the guest's mount options (what the checks prove).
`stop()`/`start()` let a fault test take "Atlas" down and bring it back on the same port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError
from builder.run import require_tool, stop_process_group

log = logging.getLogger("builder.testbed.nfs")

SHARES = ("appdata", "datasets", "managed-media", "shared-media")

CONFIG = """\
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    Lease_Lifetime = 15;
    Grace_Period = 5;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
    Allow_Numeric_Owners = true;
    Only_Numeric_Owners = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT_DEFAULTS {{
    SecType = sys;
    Squash = No_Root_Squash;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{tree}";
    Pseudo = "/";
    Protocols = 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tree(tree: Path, uid: int, gid: int) -> None:
    """Atlas' shares; the admin user (same UID/GID as on Atlas) owns them."""
    tree.mkdir(parents=True, exist_ok=True)
    for share in SHARES:
        d = tree / share
        d.mkdir(exist_ok=True)
        (d / "README.atlas-standin").write_text(f"STANDIN Atlas share '{share}'\n")
        os.chown(d, uid, gid)
        os.chown(d / "README.atlas-standin", uid, gid)
        d.chmod(0o775)


@dataclass
class GaneshaServer:
    workdir: Path
    tree: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "ganesha.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config_text(self) -> str:
        return CONFIG.format(port=self.port, tree=self.tree, recovery=self.workdir / "recovery")

    def start(self, timeout: float = 30) -> None:
        if self.running:
            return
        ganesha = require_tool("ganesha.nfsd", "nfs-ganesha nfs-ganesha-vfs")
        if os.geteuid() != 0:
            raise BuilderError("the NFS stand-in (nfs-ganesha) must run as root")
        (self.workdir / "recovery").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "ganesha.conf"
        conf.write_text(self.config_text())
        argv = [ganesha, "-F", "-f", str(conf), "-L", str(self.log_file),
                "-p", str(self.workdir / "ganesha.pid"), "-N", "NIV_EVENT"]
        log.debug("+ %s", " ".join(argv))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return
            time.sleep(0.3)
        tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
        self.stop()
        raise BuilderError(f"nfs-ganesha did not listen on 127.0.0.1:{self.port} within {timeout:.0f}s\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_process_group(proc, grace=15)


@contextlib.contextmanager
def nfs_server(workdir: Path, uid: int, gid: int, port: int | None = None, start: bool = True):
    """Start ganesha exporting a fresh Atlas tree (`start=False`: only prepared, `.start()` later);
    always stopped on exit."""
    workdir = workdir.absolute()  # ganesha.conf and the pid file are read by another program
    workdir.mkdir(parents=True, exist_ok=True)
    tree = workdir / "atlas"
    make_tree(tree, uid, gid)
    server = GaneshaServer(workdir, tree, port or free_port())
    if start:
        server.start()
    try:
        yield server
    finally:
        server.stop()
