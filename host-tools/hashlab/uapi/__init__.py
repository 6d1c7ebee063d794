"""The kernel's user API as Python: bpf(2), tun and vhost ioctls, the ``__sk_buff`` layout.

Imports nothing from hashlab; everything above may use it."""
