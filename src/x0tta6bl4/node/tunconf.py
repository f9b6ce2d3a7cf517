"""``python -m x0tta6bl4.node.tunconf NAME JSON``: configure an existing TUN device and
exit. The agent runs this as a child so that pyroute2 (about 9 MB resident once
imported) never stays in the long-lived agent process. JSON holds the keyword arguments
of :meth:`TunDevice.configure`; errors are one line on stderr and exit status 1."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m x0tta6bl4.node.tunconf NAME JSON\n")
        return 2
    from x0tta6bl4.errors import X0tError
    from x0tta6bl4.node.tun import TunDevice

    name, options = args[0], json.loads(args[1])
    # The device object only names the interface: the parent holds its descriptor.
    device = TunDevice(-1, name, vnet_hdr=False, offload=0)
    try:
        device.configure(**options)
    except (X0tError, OSError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
