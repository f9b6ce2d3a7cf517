"""The sans-IO secure channel (``docs/protocol.md``).

``endpoint.SecureEndpoint`` is the facade; it composes ``peers`` (peer table, peer and
attempt states), ``datapath`` (DATA, sealing, queues, sessions, fragment glue),
``initiator_role`` and ``responder_role`` (driving the handshake), ``certexchange``
(certificate verification, cache and exchange), ``drops`` (``DropReason``, counters) and
``timers`` (``ChannelTimer`` keys), over the codec (``wire``), ``fragment``, ``replay``,
``session``, ``handshake`` (the key schedule), ``biscuit`` and ``cookie``.
"""
