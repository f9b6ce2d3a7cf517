"""Sans-IO mesh node: links over the secure channel, routing, forwarding, end-to-end
sessions, and the observation/control types the healing loop uses."""
