# Packer template: boot the remastered autoinstall ISO of a host in QEMU and keep the installed disk.
#
# No boot_command: the remastered ISO's own grub.cfg starts the unattended install
# (`autoinstall 'ds=nocloud;s=/cdrom/nocloud/'`), so nothing is typed into the guest.
# No communicator: the build waits until the guest powers off by itself (`shutdown: poweroff`; a
# reboot also ends QEMU because of `-no-reboot`). Packer counts any QEMU exit as success, so
# `builder packer` decides from the installer's markers in the serial log (PROMETHEUS-INSTALL-OK /
# PROMETHEUS-INSTALL-FAILED) and stops Packer as soon as the failure marker appears.
#
# Every host-specific value is a variable. `builder packer` writes them from the host model to
# artifacts/<host>/packer/<host>.pkrvars.hcl and runs:
#   CHECKPOINT_DISABLE=1 packer build -var-file=<host>.pkrvars.hcl packer/prometheus.pkr.hcl
#
# Written for Debian's packer 1.6.6 (the QEMU builder is built in; no `packer init`, no
# required_plugins, no templatefile(), no `firmware`). With current Packer, add
# packer/plugins.pkr.hcl.example as plugins.pkr.hcl and run `packer init packer/` first.

variable "vm_name" {
  type        = string
  description = "Host name; also the base name of the disk images."
}

variable "iso_path" {
  type        = string
  description = "Remastered autoinstall ISO (absolute path)."
}

variable "iso_sha256" {
  type        = string
  description = "SHA-256 of iso_path; Packer refuses an ISO that does not match."
}

variable "output_directory" {
  type        = string
  description = "Where the disk images go. Must not exist yet."
}

variable "serial_log" {
  type        = string
  description = "File that receives the guest's serial console (the installer log)."
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "kvm where /dev/kvm works, else tcg (software emulation)."
}

variable "cpu_model" {
  type        = string
  default     = "max"
  description = "QEMU -cpu: max for tcg, host for kvm."
}

variable "firmware" {
  type        = string
  default     = "uefi"
  description = "host.firmware of the model: bios (SeaBIOS) or uefi (OVMF, given by ovmf_code)."
}

variable "ovmf_code" {
  type    = string
  default = "/usr/share/ovmf/OVMF.fd"
}

variable "memory_mb" {
  type    = number
  default = 4096
}

variable "cpus" {
  type    = number
  default = 2
}

variable "os_disk_size" {
  type        = string
  default     = "20G"
  description = "Blank OS disk (qcow2, grows on demand)."
}

variable "os_disk_device" {
  type        = string
  description = "QEMU -device (without drive=) presenting the OS disk on the modelled bus with the model's serial."
}

variable "scratch_disk_size" {
  type    = string
  default = "10G"
}

variable "scratch_disk_device" {
  type        = string
  description = "QEMU -device (without drive=) for the scratch disk (storage.scratch.match)."
}

variable "servers_mac" {
  type = string
}

variable "servers_netdev" {
  type        = string
  default     = ""
  description = "Extra QEMU -netdev user options for NIC 1 (subnet, gateway, DHCP start)."
}

variable "mgmt_mac" {
  type = string
}

variable "mgmt_netdev" {
  type        = string
  default     = ""
  description = "Extra QEMU -netdev user options for NIC 2."
}

variable "shutdown_timeout" {
  type        = string
  default     = "90m"
  description = "How long the install may run before Packer gives up."
}

locals {
  os_disk       = "${var.output_directory}/${var.vm_name}"
  scratch_disk  = "${var.output_directory}/${var.vm_name}-1"
  firmware_args = var.firmware == "uefi" ? [["-bios", var.ovmf_code]] : []
  net_suffix = {
    servers = var.servers_netdev == "" ? "" : ",${var.servers_netdev}"
    mgmt    = var.mgmt_netdev == "" ? "" : ",${var.mgmt_netdev}"
  }
  # Giving -drive/-device/-netdev here replaces Packer's defaults for them entirely, so the disks
  # (with the serials the autoinstall matches), the ISO and both NICs are all spelled out.
  machine_args = [
    ["-cpu", var.cpu_model],
    ["-no-reboot"],
    ["-vnc", "none"], # no screen to watch or type into: the serial log is the console
    ["-serial", "file:${var.serial_log}"],
    # Each disk sits on the bus the model names (ide-hd on AHCI for sata, nvme, virtio-blk-pci,
    # scsi-hd) with the model's serial, so udev in the installer computes the ID_SERIAL shape a real
    # disk of that bus has and the autoinstall's matcher is tested for real. Both controllers are
    # always there; an unused one is harmless.
    ["-device", "ahci,id=ahci0"],
    ["-device", "virtio-scsi-pci,id=scsi0"],
    ["-drive", "file=${local.os_disk},if=none,id=osdisk,format=qcow2,cache=writeback,discard=unmap"],
    ["-device", "${var.os_disk_device},drive=osdisk,bootindex=1"],
    ["-drive", "file=${local.scratch_disk},if=none,id=scratch,format=qcow2,cache=writeback,discard=unmap"],
    ["-device", "${var.scratch_disk_device},drive=scratch"],
    ["-drive", "file=${var.iso_path},if=none,id=cdrom,media=cdrom,readonly=on"],
    ["-device", "ide-cd,drive=cdrom,bootindex=0"],
    ["-netdev", "user,id=servers${local.net_suffix.servers}"],
    ["-device", "virtio-net-pci,netdev=servers,mac=${var.servers_mac},romfile="],
    ["-netdev", "user,id=mgmt${local.net_suffix.mgmt}"],
    ["-device", "virtio-net-pci,netdev=mgmt,mac=${var.mgmt_mac},romfile="],
  ]
}

source "qemu" "autoinstall" {
  vm_name          = var.vm_name
  iso_url          = var.iso_path
  iso_checksum     = "sha256:${var.iso_sha256}"
  output_directory = var.output_directory

  accelerator          = var.accelerator
  memory               = var.memory_mb
  cpus                 = var.cpus
  format               = "qcow2"
  disk_interface       = "virtio-scsi"
  disk_size            = var.os_disk_size
  disk_additional_size = [var.scratch_disk_size]
  qemuargs             = concat(local.firmware_args, local.machine_args)

  headless         = true
  disable_vnc      = true
  vnc_bind_address = "127.0.0.1" # in case a Packer version still opens one
  boot_wait        = "0s"
  communicator     = "none"
  shutdown_timeout = var.shutdown_timeout
}

build {
  sources = ["source.qemu.autoinstall"]
}
