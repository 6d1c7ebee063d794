"""Builders for the lab's artefacts: kernel, QEMU, guest image (cached by input content)."""
