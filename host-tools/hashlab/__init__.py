"""hashlab: a reproducible lab for virtio-net hash reporting with eBPF RSS."""

__version__ = "0.1.0"
