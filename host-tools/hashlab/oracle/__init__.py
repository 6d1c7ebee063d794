"""What the hash and the queue of a frame should be: the virtio spec's RSS and the
behaviours of QEMU's datapaths, as pure functions (no I/O, no hashlab imports)."""
