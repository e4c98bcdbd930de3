"""The test bed: test doubles the product reaches only through its stand-in targets.

stand-in ISO and installer initrd (standin_iso), stand-in installed system (image), the harness
services the guest talks to (Atlas NFS, signed APT repositories with stub packages), the QEMU boot
of a stand-in guest (boot) and the serial console reader (console). Never installable.
"""
