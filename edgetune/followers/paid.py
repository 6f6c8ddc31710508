"""Accept exactly the followers who paid (a payments CSV) and issue their licences.

Built on the access-request calls of ``edgetune.followers.access``: :func:`sync` decides who
paid and carries that out, :func:`issue_licences` writes one licence per paid follower.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import hub
from edgetune.followers.access import (
    STATUSES,
    Outcome,
    Progress,
    Retry,
    apply_action,
    check_reason,
    list_requests,
)
from edgetune.payments import Payments


@dataclass
class SyncResult:
    """What ``sync`` did (or, with dry_run, would do). Requests are AccessRequest objects."""

    repo: str
    dry_run: bool
    reject_unpaid: bool
    accepted: list = field(default_factory=list)  # paid, accepted now (or would be)
    unpaid: list = field(default_factory=list)  # pending, not in payments: left or rejected
    rejected: list = field(default_factory=list)  # of unpaid: rejected now (or would be)
    conflicts: list = field(default_factory=list)  # payment email claimed by several accounts
    already_accepted: list = field(default_factory=list)  # paid and had access before
    rejected_paid: list = field(default_factory=list)  # paid but rejected earlier: left alone
    failures: list[Outcome] = field(default_factory=list)
    error: hub.HubError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    @property
    def left_pending(self) -> list:
        rejected = {r.username for r in self.rejected}
        return [r for r in [*self.unpaid, *self.conflicts] if r.username not in rejected]

    def fate(self, request: Any) -> str:
        """What became of an unpaid request: rejected, would be rejected, reject failed, ..."""
        if request.username in {r.username for r in self.rejected}:
            return "would be rejected" if self.dry_run else "rejected"
        if request.username in {o.user for o in self.failures}:
            return "reject failed"
        return "left pending"

    @property
    def paid_with_access(self) -> list[str]:
        """Usernames of paid followers who have access after this run (for licences)."""
        return [r.username for r in [*self.already_accepted, *self.accepted]]


def sync(client: Any, repo: str, payments: Payments, *, dry_run: bool = False,
         reject_unpaid: bool = False, recheck_rejected: bool = False,
         reason: str | None = None, on_progress: Progress | None = None,
         on_retry: Retry | None = None) -> SyncResult:
    """Accept every pending request that matches ``payments``; leave or reject the rest.

    A request matches by username, or by the follower's email or the access form's payment
    email. The form is typed by the follower, so an email claimed by two accounts (pending or
    already accepted) accepts neither: those are reported as conflicts and left pending.
    With ``recheck_rejected``, paid followers whose request was rejected earlier (e.g. by
    --reject-unpaid before their payment arrived) are accepted too. A rerun accepts nothing new.
    """
    hub.check_repo_id(repo)
    check_reason(reason)
    lists = {status: list_requests(client, repo, status, on_retry=on_retry)
             for status in STATUSES}
    result = SyncResult(repo, dry_run, reject_unpaid)
    candidates = lists["pending"] + (lists["rejected"] if recheck_rejected else [])
    matches = {id(r): payments.match(r) for r in [*lists["accepted"], *candidates]}
    claimants: dict[str, set[str]] = {}
    for request in [*lists["accepted"], *candidates]:
        how = matches[id(request)]
        if how is not None and how[0] == "email":
            claimants.setdefault(how[1], set()).add(request.username.lower())
    result.already_accepted = [r for r in lists["accepted"] if matches[id(r)] is not None]
    if not recheck_rejected:
        result.rejected_paid = [r for r in lists["rejected"] if payments.match(r) is not None]
    for request in candidates:
        how = matches[id(request)]
        if how is None:
            if request.status == "pending":
                result.unpaid.append(request)
        elif how[0] == "email" and len(claimants[how[1]]) > 1:
            if request.status == "pending":  # a rejected one simply stays rejected
                result.conflicts.append(request)
        else:
            result.accepted.append(request)
    result.rejected = list(result.unpaid) if reject_unpaid else []
    if dry_run:
        return result
    result.accepted = _carry_out(client, result, result.accepted, "accept", None,
                                 on_progress, on_retry)
    result.rejected = _carry_out(client, result, result.rejected, "reject", reason,
                                 on_progress, on_retry)
    return result


def _carry_out(client: Any, result: SyncResult, requests: list, action: str,
               reason: str | None, on_progress: Progress | None, on_retry: Retry | None) -> list:
    """Do ``action`` for ``requests``; return those it was done for, record the failures."""
    if not requests or result.error is not None:  # stopped already: do nothing more
        return []
    done = apply_action(client, result.repo, [(r.username, r.status) for r in requests],
                        action, reason=reason, on_progress=on_progress, on_retry=on_retry)
    ok = {o.user for o in done.outcomes if o.ok}
    result.failures += done.failed
    result.error = done.error
    return [r for r in requests if r.username in ok]


# --- licences -----------------------------------------------------------------------------------

@dataclass
class LicenceBatch:
    bundle_id: str
    version: str
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # a licence file was already there
    # of kept: files not bound to this bundle_id and version (a licence binds one exact
    # version, so these followers have no licence for this release: use another folder)
    other_release: list[Path] = field(default_factory=list)


def licence_path(out_dir: Path, follower: str) -> Path:
    from edgetune.licences import LICENCE_SUFFIX, safe_file_stem

    return Path(out_dir) / (safe_file_stem(follower) + LICENCE_SUFFIX)


def check_licence_key(private_key: Path, passphrase: str | None, bundle: Path) -> tuple[str, str]:
    """Fail before touching the Hub when the key, its passphrase or the bundle will not do.

    Signs one throwaway licence in memory (never written); returns (bundle_id, version).
    """
    from edgetune.licences import issue_for_bundle

    envelope = issue_for_bundle(private_key, passphrase, bundle, follower="preflight")
    payload = json.loads(base64.b64decode(envelope["payload"]))
    return payload["bundle_id"], payload["bundle_version"]


def issue_licences(private_key: Path, passphrase: str | None, bundle: Path | tuple[str, str],
                   followers: Iterable[str], out_dir: Path) -> LicenceBatch:
    """One licence per follower (follower id = HF username) into ``out_dir``.

    ``bundle`` is the bundle folder or edgetune.json (checked against the key), or its
    (bundle_id, version). Existing licence files are kept, never overwritten; those bound to
    another bundle or version are listed in ``other_release``. The rest go through
    ``licences.issue_from_csv`` (key loaded once, one disk sync for the batch): 1,000 in ~1 s.
    """
    from edgetune.licences import issue_from_csv

    ids = tuple(bundle) if isinstance(bundle, (tuple, list)) else \
        check_licence_key(private_key, passphrase, bundle)
    out_dir, batch = Path(out_dir), LicenceBatch(*ids)
    todo: list[str] = []
    seen: set[str] = set()
    for follower in followers:
        path = licence_path(out_dir, follower)
        if path.name.lower() in seen:
            continue
        seen.add(path.name.lower())
        if os.path.lexists(path):
            batch.kept.append(path)
            if _bound_to(path) != ids:
                batch.other_release.append(path)
        else:
            todo.append(follower)
    if not todo:
        return batch
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgetune-followers-") as tmp:
        listing = Path(tmp) / "followers.csv"
        with open(listing, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["follower"])
            writer.writerows([f] for f in todo)
        batch.written = issue_from_csv(private_key, passphrase, bundle, listing, out_dir)
    return batch


def _bound_to(path: Path) -> tuple[str, str] | None:
    """(bundle_id, bundle_version) written in a licence file, unchecked; None if unreadable."""
    try:
        envelope = json.loads(Path(path).read_text(encoding="utf-8"))
        payload = json.loads(base64.b64decode(envelope["payload"], validate=True))
        return payload["bundle_id"], payload["bundle_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
