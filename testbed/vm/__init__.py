"""Other kernels in virtual machines: fetch (`kernels`), boot (`machine`), the guest's
agent (`agent`) and initramfs (`initramfs`). The conformance driver is
`conformance.iut.vm`."""
