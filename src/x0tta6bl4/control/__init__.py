"""The control plane: enrollment, certificates, revocation, policy, topology and events.

FastAPI app (``app.create_app``), one router per resource (``routers/``), SQLAlchemy 2
models (``models``) behind a repository layer, Alembic migrations (``migrations/``), a bus
(Redis pub/sub, or in-process) for pushes across replicas, API-key RBAC (``auth``).
"""
