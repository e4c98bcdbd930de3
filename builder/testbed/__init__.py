"""First-boot verification infrastructure: stand-in image, harness services, QEMU boot, SSH access."""

from builder.testbed.ssh import GuestAccess, ssh_run

__all__ = ["GuestAccess", "ssh_run"]
