"""The sans-IO secure channel: wire codec, hybrid KEM-authenticated handshake, sessions,
cookies, biscuits, fragmentation, and ``SecureEndpoint``, which holds the peers
(``docs/protocol.md``)."""
