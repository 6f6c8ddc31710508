"""Followers of a gated Hugging Face repo: list, accept, reject and grant access requests, and
accept exactly the followers who paid (a payments CSV), optionally issuing their licences.

Pure functions over a ``huggingface_hub.HfApi`` client (``edgetune.hub.api(token)``); the Click
layer is ``edgetune.cli.followers``. Every Hub call goes through :func:`edgetune.hub.retrying`
(429/5xx/network, with backoff) and :func:`edgetune.hub.errors` (HubError with a hint).

One user's failure never loses the others: :func:`handle` and :func:`sync` finish their loop and
return every user's outcome; an error that makes further calls pointless (token refused, no
rights on the repo, the Hub down for several users in a row) stops the loop, marks the rest as
not attempted and is returned in the result's ``error`` for the caller to raise after reporting.
Everything is idempotent: a rerun only does what is still left to do.

``access`` makes the access-request calls; ``paid`` decides who paid and issues licences.
"""

from edgetune import hub  # the CLI checks repo ids through ``followers.hub``
from edgetune.followers.access import (
    ACTIONS,
    MAX_CONSECUTIVE_TRANSIENT,
    REJECTION_REASON_MAX,
    STATUSES,
    HandleResult,
    Outcome,
    handle,
    list_requests,
    request_json,
)
from edgetune.followers.paid import (
    LicenceBatch,
    SyncResult,
    check_licence_key,
    issue_licences,
    licence_path,
    sync,
)

__all__ = [
    "hub", "ACTIONS", "MAX_CONSECUTIVE_TRANSIENT", "REJECTION_REASON_MAX", "STATUSES",
    "HandleResult", "Outcome", "handle", "list_requests", "request_json", "LicenceBatch",
    "SyncResult", "check_licence_key", "issue_licences", "licence_path", "sync",
]
