"""The node agent's IO: asyncio UDP driving the sans-IO cores (``udp.py``); the agent's
configuration, state directory, TUN device and local API come here next. Never imports
``control`` or ``sim``."""
