"""Mechanism on the host: QEMU processes (guests, qtest), the lab VM, taps, libbpf,
and what a datapath needs on this machine.  No policy: no scenarios, no verdicts."""
