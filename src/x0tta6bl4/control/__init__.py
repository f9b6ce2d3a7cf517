"""The control plane (FastAPI, SQLAlchemy, Redis) comes here. It may import crypto,
identity, policy and observability, never channel, routing, mesh, sim or node (enforced
by the import contracts in ``pyproject.toml``)."""
