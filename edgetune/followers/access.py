"""Access requests of a gated Hugging Face repo: list them, and accept, reject or grant access
user by user.

Pure functions over a ``huggingface_hub.HfApi`` client (``edgetune.hub.api(token)``). Every Hub
call goes through :func:`edgetune.hub.retrying` (429/5xx/network, with backoff) and
:func:`edgetune.hub.errors` (HubError with a hint). :func:`apply_action` never stops on one
user's failure; an error that makes further calls pointless stops the loop and is returned in
the result's ``error``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgetune import hub
from edgetune.errors import DataError
from edgetune.payments import payment_email

STATUSES = ("pending", "accepted", "rejected")
ACTIONS = ("accept", "reject", "grant")
REJECTION_REASON_MAX = 200  # the Hub refuses longer rejection reasons
# After this many users in a row failed on the network or with 5xx (each after all retries),
# the Hub is down: stop instead of spending minutes of backoff on every remaining user.
MAX_CONSECUTIVE_TRANSIENT = 3

_PAST = {"accept": "accepted", "reject": "rejected", "grant": "granted"}

Progress = Callable[[str, int, int], None]  # (what, done, total)
Retry = Callable[[str], None]


# --- access requests --------------------------------------------------------------------------

def request_json(request: Any) -> dict:
    """An AccessRequest as JSON-ready data (the same keys the CLI's --json prints)."""
    stamp = getattr(request, "timestamp", None)
    return {"username": request.username, "fullname": request.fullname, "email": request.email,
            "payment_email": payment_email(request),
            "requested_at": stamp.isoformat() if stamp is not None else None,
            "status": request.status, "fields": request.fields or {}}


def _list(client: Any, repo: str, status: str, on_retry: Retry | None) -> list:
    methods = {"pending": client.list_pending_access_requests,
               "accepted": client.list_accepted_access_requests,
               "rejected": client.list_rejected_access_requests}
    call = methods[status]
    with hub.errors(repo, writing=True):  # listing needs the rights that accepting needs
        try:  # 1.33 yields lazily: list() inside the retried call, so a retry starts over
            return hub.retrying(lambda: list(call(repo)), what=f"listing {status} requests",
                                on_retry=on_retry)
        except Exception as exc:
            if hub.status_of(exc) == 400:  # documented: "HTTP 400 if the repo is not gated"
                raise _not_gated(repo, exc) from exc
            raise


def _not_gated(repo: str, exc: BaseException) -> hub.HubError:
    server = hub.redact(getattr(exc, "server_message", "") or "")
    return hub.HubError(
        f"{repo} is not a gated repo, so it has no access requests"
        + (f" (the Hub said: {server[:200]})" if server else ""),
        hint="turn on access requests with manual approval in the repo's settings on the Hub "
             "(or publish the bundle as gated), then share the repo page with your followers")


def list_requests(client: Any, repo: str, status: str = "pending", *,
                  on_retry: Retry | None = None) -> list:
    """Access requests of ``repo`` with ``status`` (pending, accepted, rejected or all).

    Returns ``huggingface_hub`` AccessRequest objects, oldest first within each status.
    """
    hub.check_repo_id(repo)
    if status not in (*STATUSES, "all"):
        raise ValueError(f"status must be one of {', '.join(STATUSES)} or all, not {status!r}")
    found: list = []
    for each in (STATUSES if status == "all" else (status,)):
        found += _list(client, repo, each, on_retry)
    return found


# --- accept / reject / grant --------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What happened to one user: ``ok`` False means the action did not happen (see detail)."""

    user: str
    action: str  # accept, reject or grant
    ok: bool
    changed: bool  # False: nothing to do (already in that state), failed or not attempted
    detail: str  # "accepted", "already accepted", or why it failed

    def to_json(self) -> dict:
        return {"user": self.user, "action": self.action, "ok": self.ok,
                "changed": self.changed, "detail": self.detail}


@dataclass
class HandleResult:
    repo: str
    action: str
    outcomes: list[Outcome] = field(default_factory=list)
    error: hub.HubError | None = None  # stopped early: raise it after reporting the outcomes

    @property
    def ok(self) -> bool:
        return self.error is None and all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def _as_hub_error(repo: str, exc: BaseException) -> hub.HubError:
    """What ``hub.errors`` makes of ``exc`` (HubError with a hint)."""
    try:
        with hub.errors(repo, writing=True):
            raise exc
    except hub.HubError as mapped:
        return mapped
    except Exception:  # noqa: BLE001 - not a Hub error: describe it without its text
        return hub.HubError(f"{repo}: {type(exc).__name__}",
                            hint="set EDGETUNE_DEBUG=1 for details")


def _user_problem(exc: BaseException) -> str | None:
    """The reason when the Hub refused the call for this user only (400/404 on that user)."""
    from huggingface_hub import errors as hf

    status = hub.status_of(exc)
    if isinstance(exc, hf.RepositoryNotFoundError) or status not in (400, 404):
        return None
    server = hub.redact(getattr(exc, "server_message", "") or "").strip()
    return f"refused by the Hub (HTTP {status})" + (f": {server[:200]}" if server else "")


def apply_action(client: Any, repo: str, plan: Sequence[tuple[str, str | None]], action: str,
                 *, reason: str | None, on_progress: Progress | None,
                 on_retry: Retry | None) -> HandleResult:
    """Do ``action`` for each (username, current status or None); never stop on one user."""
    result = HandleResult(repo, action)
    total, streak = len(plan), 0
    if on_progress:
        on_progress(action, 0, total)
    for done, (user, status) in enumerate(plan, start=1):
        if result.error is not None:
            result.outcomes.append(Outcome(user, action, False, False,
                                           "not attempted (stopped early; rerun to continue)"))
            continue
        if action == "accept" or (action == "grant" and status in ("pending", "rejected")):
            # accepting keeps the follower's request and form answers; grant is for the others
            call = lambda u=user: client.accept_access_request(repo, u)  # noqa: E731
        elif action == "reject":
            call = lambda u=user: client.reject_access_request(  # noqa: E731
                repo, u, rejection_reason=reason)
        else:
            call = lambda u=user: client.grant_access(repo, u)  # noqa: E731
        try:
            hub.retrying(call, what=f"{action} {user}", on_retry=on_retry)
        except Exception as exc:  # noqa: BLE001 - classified: this user, transient, or fatal
            problem = _user_problem(exc)
            if problem is not None:
                streak = 0
                result.outcomes.append(Outcome(user, action, False, False, problem))
            elif hub.transient(exc):
                streak += 1
                mapped = _as_hub_error(repo, exc)
                result.outcomes.append(Outcome(user, action, False, False,
                                               f"{mapped.message} (after retries)"))
                if streak >= MAX_CONSECUTIVE_TRANSIENT:
                    result.error = hub.HubError(
                        f"{repo}: the Hub failed for {streak} users in a row; stopped",
                        hint="try again later: a rerun continues where this one stopped")
            else:  # token refused, no rights on the repo, ...: the same for every user
                result.error = _as_hub_error(repo, exc)
                result.outcomes.append(Outcome(user, action, False, False, result.error.message))
        else:
            streak = 0
            result.outcomes.append(Outcome(user, action, True, True, _PAST[action]))
        if on_progress:
            on_progress(action, done, total)
    return result


def _unique(users: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for user in users:
        user = user.strip().lstrip("@")
        if user and user.lower() not in seen:
            seen[user.lower()] = user
    return list(seen.values())


def handle(client: Any, repo: str, users: Iterable[str], action: str, *,
           reason: str | None = None, on_progress: Progress | None = None,
           on_retry: Retry | None = None) -> HandleResult:
    """Accept, reject or grant access for ``users``; one outcome per user, in order.

    The three request lists are read first (3 calls), so that a user already in the wanted
    state is reported as unchanged (not an error), and a user with no request to accept or
    reject is reported as failed without calling the Hub. ``grant`` needs no request.
    Usernames match case-insensitively; the Hub's spelling is used.
    """
    hub.check_repo_id(repo)
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    check_reason(reason)
    known: dict[str, tuple[str, str]] = {}  # lower username -> (username, status)
    for status in STATUSES:
        for request in _list(client, repo, status, on_retry):
            known[request.username.lower()] = (request.username, status)
    names = _unique(users)
    decided: dict[str, Outcome] = {}  # lower username -> outcome decided without a call
    plan: list[tuple[str, str | None]] = []
    already = {"accept": "accepted", "reject": "rejected", "grant": "accepted"}[action]
    for user in names:
        name, status = known.get(user.lower(), (user, None))
        if status == already:
            decided[user.lower()] = Outcome(name, action, True, False, f"already {status}"
                                            if action != "grant" else "already has access")
        elif status is None and action != "grant":
            decided[user.lower()] = Outcome(
                name, action, False, False,
                f"no access request from {name}" + (" (grant gives access without one)"
                                                    if action == "accept" else ""))
        else:
            plan.append((name, status))
    done = apply_action(client, repo, plan, action, reason=reason, on_progress=on_progress,
                        on_retry=on_retry)
    decided.update((o.user.lower(), o) for o in done.outcomes)
    return HandleResult(repo, action, [decided[u.lower()] for u in names], done.error)


def check_reason(reason: str | None) -> None:
    """Refuse a rejection reason the Hub would refuse, before any call."""
    if reason is not None and len(reason) > REJECTION_REASON_MAX:
        raise DataError(f"the rejection reason has {len(reason)} characters",
                        f"the Hub takes at most {REJECTION_REASON_MAX}: shorten it")
