"""What nodes and the control plane share: request schemas, the enrollment envelope, and
signed node requests. Both sides import this package; it imports only crypto, identity,
policy and pydantic, so a node never pulls in the service's stack."""
