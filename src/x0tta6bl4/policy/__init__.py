"""Zero-trust access policy: ``(src identity, dst identity, proto, port) -> Decision``.

Rules select nodes by certificate tag or SPIFFE ID pattern; the first matching rule in
file order decides, and a flow no rule matches is denied. Policies are versioned and
signed by the mesh CA (ML-DSA-65); a node keeps its last good one (``accept_policy``).
See docs/policy.md.
"""

from __future__ import annotations

from x0tta6bl4.policy.engine import MAX_CACHED_PAIRS, Policy
from x0tta6bl4.policy.parse import MAX_POLICY_SIZE, MAX_RULES, parse_flow
from x0tta6bl4.policy.signed import (
    BEGIN,
    END,
    MAX_SIGNED_SIZE,
    SIGNATURE_CONTEXT,
    Acceptance,
    Outcome,
    SignedPolicy,
    accept_newer,
    accept_policy,
    ca_keys,
    split_signed,
)
from x0tta6bl4.policy.types import (
    DEFAULT_DENY,
    DEFAULT_DENY_ID,
    Decision,
    PolicyRejected,
    PolicySyntaxError,
    Proto,
    RefusalReason,
    Rule,
    Selector,
    Subject,
)

__all__ = [
    "BEGIN",
    "DEFAULT_DENY",
    "DEFAULT_DENY_ID",
    "END",
    "MAX_CACHED_PAIRS",
    "MAX_POLICY_SIZE",
    "MAX_RULES",
    "MAX_SIGNED_SIZE",
    "SIGNATURE_CONTEXT",
    "Acceptance",
    "Decision",
    "Outcome",
    "Policy",
    "PolicyRejected",
    "PolicySyntaxError",
    "Proto",
    "RefusalReason",
    "Rule",
    "Selector",
    "SignedPolicy",
    "Subject",
    "accept_newer",
    "accept_policy",
    "ca_keys",
    "parse_flow",
    "split_signed",
]
