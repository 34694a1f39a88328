"""Policies: who may receive which personal data, from whom, for which purpose.

:mod:`~gateway.policy.model` holds the loaded set as frozen data,
:mod:`~gateway.policy.loader` builds it from the TOML files and
:mod:`~gateway.policy.decision` answers questions about it.
"""

from gateway.policy.decision import (
    AuthorizationDetail,
    Decision,
    Deny,
    DenyCode,
    Permit,
    decide_request,
    decide_transfer,
    parse_authorization_details,
)
from gateway.policy.loader import PolicyError, describe, load_policies
from gateway.policy.model import (
    ACR_LEVELS,
    IDENTITY_CLAIMS,
    Client,
    Field,
    Grant,
    Label,
    PolicySet,
    Provider,
    Purpose,
    Resource,
    Role,
    acr_rank,
)

__all__ = [
    "ACR_LEVELS",
    "IDENTITY_CLAIMS",
    "AuthorizationDetail",
    "Client",
    "Decision",
    "Deny",
    "DenyCode",
    "Field",
    "Grant",
    "Label",
    "Permit",
    "PolicyError",
    "PolicySet",
    "Provider",
    "Purpose",
    "Resource",
    "Role",
    "acr_rank",
    "decide_request",
    "decide_transfer",
    "describe",
    "load_policies",
    "parse_authorization_details",
]
