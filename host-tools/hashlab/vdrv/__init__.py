"""A Python virtio-pci (modern) driver for virtio-net, driven over QEMU's qtest protocol.

The second guest of hashlab: unlike Linux it can enable every hash type (the ``_EX``
ones too) and sees the exact ``hash_value``/``hash_report`` the device writes.

* :mod:`.pci` – configuration access (0xCF8/0xCFC), enumeration, BAR assignment;
* :mod:`.virtio` – the virtio 1.x PCI transport and split virtqueues;
* :mod:`.net` – the virtio-net driver: negotiation, control queue (RSS_CONFIG,
  HASH_CONFIG, VQ_PAIRS_SET, HASH_TUNNEL_SET), receive with the raw 20-byte header;
* :mod:`.dgram` – UDP injection for ``-netdev dgram`` (the tap is :mod:`hashlab.host.tap`);
* :mod:`.rig` – all of it together: ``NetRig`` starts a tap, QEMU and the driver.
"""

from .net import (  # noqa: F401
    HDR_V1_HASH_LEN,
    RX_SENTINEL,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_HASH_REPORT,
    VIRTIO_NET_F_HASH_TUNNEL,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_RSS,
    VIRTIO_NET_OK,
    Ack,
    NetConfig,
    RxFrame,
    VirtioNet,
    feature_names,
    hash_config_payload,
    rss_config_payload,
)
from .pci import PciDevice, PciResourceAllocator, enumerate_bus  # noqa: F401
from .rig import NetRig, RunResult  # noqa: F401
from .dgram import UdpInjector  # noqa: F401
from .virtio import VIRTIO_F_VERSION_1, GuestMemory, SplitQueue, VirtioError, VirtioPciModern  # noqa: F401
