"""``edgetune followers``: who asked for access to a gated repo, and who gets it.

Only Click and rich here; the logic is ``edgetune.followers``. Register the group on the main
CLI with ``cli.add_command(followers)``. Tokens come from --token, HF_TOKEN or ``hf auth login``
and are never printed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from edgetune.cli.base import CliGroup, echo
from edgetune.cli.options import json_option, passphrase_for, signing_key_option
from edgetune.errors import EdgetuneError

_SHOWN = 50  # rows of a long list printed before "... and N more"
_DEFAULT_REASON = ("No payment found for this account or the email you entered. If you paid, "
                   "contact the creator with your payment email.")


@click.group(cls=CliGroup)  # errors as the main CLI shows them, also when invoked on its own
def followers() -> None:
    """Followers of a gated Hugging Face repo: list, accept, reject, grant, and sync with payments.

    Every command takes the repo (USER/NAME) first and a token with write access to it
    (--token, else HF_TOKEN, else `hf auth login`).

    \b
    Examples:
      edgetune followers pending coach-ada/marathon-coach
      edgetune followers sync coach-ada/marathon-coach --paid payments.csv --dry-run
    """


def _hub_options(fn):
    fn = json_option("Print machine-readable JSON on stdout.")(fn)
    fn = click.option("--token", default=None, metavar="TOKEN",
                      help="Hugging Face token with write access to the repo. Default: HF_TOKEN, "
                           "else the token of `hf auth login`. Never printed.")(fn)
    return click.argument("repo")(fn)


@contextlib.contextmanager
def _json_errors(as_json: bool):
    """With --json, an error is a JSON object on stdout too (Error:/Hint: still go to stderr)."""
    try:
        yield
    except EdgetuneError as exc:
        if as_json and not getattr(exc, "_json_printed", False):
            echo(json.dumps({"ok": False, "error": exc.message, "hint": exc.hint}))
        raise


def _client(repo: str, token: str | None):
    from edgetune import hub

    hub.check_repo_id(repo)
    token = hub.resolve_token(token)
    if not token:
        raise hub.HubError("no Hugging Face token found",
                           hint="set HF_TOKEN, pass --token, or run `hf auth login` with a "
                                "token that has write access to the repo")
    return hub.api(token)


def _note(message: str) -> None:
    from edgetune.hub import redact

    echo(f"note: {redact(message)}", err=True)


def _print(table) -> None:
    """On stdout; in a pipe, each request stays on one line (console.print_table)."""
    from edgetune.cli.console import print_table, stdout_console

    print_table(stdout_console(highlight=False), table)


def _when(request) -> str:
    stamp = getattr(request, "timestamp", None)
    return stamp.strftime("%Y-%m-%d %H:%M") if stamp is not None else "-"


def _requests_table(requests, title: str, status=None):
    """A table of access requests; ``status(request)`` overrides the status column."""
    from rich.table import Table

    from edgetune.payments import payment_email

    table = Table(title=title, title_justify="left",
                  caption="payment email: what the follower typed in the access form",
                  caption_justify="left")
    table.add_column("username", no_wrap=True)
    table.add_column("full name")
    table.add_column("email", overflow="fold")
    table.add_column("payment email", overflow="fold")
    table.add_column("requested (UTC)", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for request in requests:
        table.add_row(request.username, request.fullname or "", request.email or "",
                      payment_email(request) or "", _when(request),
                      status(request) if status else request.status)
    return table


def _show_list(repo: str, token: str | None, status: str, as_json: bool) -> None:
    from edgetune.followers import list_requests, request_json

    with _json_errors(as_json):
        requests = list_requests(_client(repo, token), repo, status, on_retry=_note)
    if as_json:
        echo(json.dumps({"ok": True, "repo": repo, "status": status,
                               "requests": [request_json(r) for r in requests]}, indent=2))
        return
    what = "" if status == "all" else f"{status} "
    if not requests:
        echo(f"No {what}access requests on {repo}.")
        return
    _print(_requests_table(requests, f"{len(requests)} {what}access request(s) on {repo}"))


@followers.command("pending")
@_hub_options
def pending_cmd(repo, token, as_json) -> None:
    """Pending access requests of REPO (USER/NAME): who is waiting for you.

    \b
    Example:
      edgetune followers pending coach-ada/marathon-coach
    """
    _show_list(repo, token, "pending", as_json)


@followers.command("list")
@_hub_options
@click.option("--status", type=click.Choice(["pending", "accepted", "rejected", "all"]),
              default="all", show_default=True, help="Which requests to list.")
def list_cmd(repo, token, as_json, status) -> None:
    """Access requests of REPO (USER/NAME), with the payment email each follower entered.

    \b
    Example:
      edgetune followers list coach-ada/marathon-coach --status accepted --json
    """
    _show_list(repo, token, status, as_json)


def _finish(result_json: dict, error, failed: int, as_json: bool) -> None:
    """Print JSON (when asked), then end: the stopping error, or exit 1 when users failed."""
    ctx = click.get_current_context()
    if as_json:
        if error is not None:
            result_json.update(error=error.message, hint=error.hint)
            error._json_printed = True
        echo(json.dumps(result_json, indent=2, default=str))
    if error is not None:
        raise error
    if failed:
        if not as_json:
            echo(f"Error: {failed} user(s) failed (see above); a rerun retries them",
                       err=True)
        ctx.exit(1)


def _handle(repo, users, token, as_json, action, reason=None) -> None:
    from edgetune.followers import handle

    from edgetune.cli.console import count_bar

    with _json_errors(as_json), count_bar() as bar:
        result = handle(_client(repo, token), repo, users, action, reason=reason,
                        on_progress=bar, on_retry=_note)
    if not as_json:
        for o in result.outcomes:
            mark = "✗" if not o.ok else ("✓" if o.changed else "·")
            echo(f"{mark} {o.user}: {o.detail}")
        changed = sum(o.changed for o in result.outcomes)
        unchanged = sum(o.ok and not o.changed for o in result.outcomes)
        echo(f"{repo}: {changed} {'granted' if action == 'grant' else action + 'ed'}, "
                   f"{unchanged} unchanged, {len(result.failed)} failed")
    payload = {"ok": result.ok, "repo": repo, "action": action,
               "results": [o.to_json() for o in result.outcomes]}
    _finish(payload, result.error, len(result.failed), as_json)


_USERS = click.argument("users", nargs=-1, required=True, metavar="USER...")


@followers.command("accept")
@_hub_options
@_USERS
def accept_cmd(repo, token, as_json, users) -> None:
    """Accept the access requests of USERs (Hugging Face usernames) on REPO.

    A user already accepted is reported as unchanged; one with no request is reported as
    failed (use `grant`). Exits 1 when any user failed.

    \b
    Example:
      edgetune followers accept coach-ada/marathon-coach ada-runs bob42
    """
    _handle(repo, users, token, as_json, "accept")


@followers.command("reject")
@_hub_options
@_USERS
@click.option("--reason", default=None, help="Shown to the users (at most 200 characters).")
def reject_cmd(repo, token, as_json, users, reason) -> None:
    """Reject the access requests of USERs on REPO (also takes access away from accepted ones).

    \b
    Example:
      edgetune followers reject coach-ada/marathon-coach spammer --reason "No payment found"
    """
    _handle(repo, users, token, as_json, "reject", reason)


@followers.command("grant")
@_hub_options
@_USERS
def grant_cmd(repo, token, as_json, users) -> None:
    """Give USERs access to REPO without waiting for their request.

    \b
    Example:
      edgetune followers grant coach-ada/marathon-coach ada-runs
    """
    _handle(repo, users, token, as_json, "grant")


def _names(requests, limit: int = _SHOWN) -> str:
    names = [r.username for r in requests]
    more = f" ... and {len(names) - limit} more (--json lists all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@followers.command("sync")
@_hub_options
@click.option("--paid", "paid", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Payments CSV: header row with hf_username and/or email columns.")
@click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing.")
@click.option("--reject-unpaid", is_flag=True,
              help="Reject pending requests not in the payments (default: leave them pending).")
@click.option("--reason", default=_DEFAULT_REASON, show_default=False,
              help="With --reject-unpaid: the reason shown to rejected users (max 200 chars).")
@click.option("--recheck-rejected", is_flag=True,
              help="Also accept paid followers whose request was rejected earlier.")
@click.option("--licences-for", "--licenses-for", "licences_for",
              type=click.Path(exists=True, path_type=Path), default=None,
              help="Issue a licence per paid follower with access, for this bundle (folder or "
                   "edgetune.json); the follower id is the HF username.")
@click.option("--licences-dir", "--licenses-dir", "licences_dir",
              type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the <username>.licence.json files. "
                   "Default: licences/<bundle_id>-<version>")
@signing_key_option("The creator's private key, which signs the licences (with "
                    "--licences-for). Default: ~/.edgetune/keys/edgetune.key (passphrase from "
                    "EDGETUNE_KEY_PASSPHRASE, or asked for).")
def sync_cmd(repo, token, as_json, paid, dry_run, reject_unpaid, reason, recheck_rejected,
             licences_for, licences_dir, private_key) -> None:
    """Accept every pending request of REPO whose follower is in the --paid CSV.

    A request matches by Hugging Face username, or by the follower's email or the access
    form's payment email (case and spaces ignored). The rest are reported and left pending
    (or rejected with --reject-unpaid). An email claimed by two accounts accepts neither:
    check those by hand. Reruns are safe: accepted followers are no longer pending.

    \b
    CSV example (extra columns are ignored):
      hf_username,email,amount
      ada-runs,,9.99
      ,bob@example.com,9.99
    \b
    Examples:
      edgetune followers sync coach-ada/marathon-coach --paid payments.csv --dry-run
      edgetune followers sync coach-ada/marathon-coach --paid payments.csv \\
          --licences-for edgetune-out/bundle --licences-dir licences
    """
    from edgetune import followers as fl
    from edgetune.cli.console import count_bar
    from edgetune.payments import read_payments

    if licences_for is None and (licences_dir is not None or private_key is not None):
        raise click.UsageError("--licences-dir and --signing-key go with --licences-for BUNDLE")
    with _json_errors(as_json):
        fl.hub.check_repo_id(repo)
        payments = read_payments(paid)  # a bad CSV stops before any Hub call
        key = secret = None
        if licences_for is not None:  # and so does a bad key, passphrase or bundle
            from edgetune.keys import default_private_key

            key = private_key or default_private_key()
            secret = passphrase_for(key)
            bundle_id, version = fl.check_licence_key(key, secret, licences_for)
            # one folder per release by default: a licence binds one exact version
            licences_dir = licences_dir or Path("licences") / f"{bundle_id}-{version}"
        client = _client(repo, token)
        with count_bar() as bar:
            result = fl.sync(client, repo, payments, dry_run=dry_run,
                             reject_unpaid=reject_unpaid, recheck_rejected=recheck_rejected,
                             reason=reason if reject_unpaid else None, on_progress=bar,
                             on_retry=_note)
        batch, would_write, licence_error = None, 0, None
        if licences_for is not None:
            wanted = result.paid_with_access
            if dry_run:
                would_write = sum(not fl.licence_path(licences_dir, u).exists() for u in wanted)
            else:
                try:  # after accepting: report what was accepted, then this error
                    batch = fl.issue_licences(key, secret, (bundle_id, version), wanted,
                                              licences_dir)
                except EdgetuneError as exc:
                    licence_error = exc
    error = result.error or licence_error

    unpaid_fate = "rejected" if reject_unpaid else "left pending"
    if reject_unpaid and len(result.rejected) < len(result.unpaid):  # stopped or failed
        unpaid_fate = (f"{len(result.rejected)} rejected, "
                       f"{len(result.unpaid) - len(result.rejected)} left pending")
    if as_json:
        from edgetune.followers import request_json

        payload = {
            "ok": result.ok and licence_error is None, "repo": repo, "dry_run": dry_run,
            "payments": payments.rows,
            "accepted": [r.username for r in result.accepted],
            "not_in_payments": [{**request_json(r), "action": result.fate(r)}
                                for r in result.unpaid],
            "rejected": [r.username for r in result.rejected],
            "conflicts": [request_json(r) for r in result.conflicts],
            "already_accepted": [r.username for r in result.already_accepted],
            "rejected_but_paid": [r.username for r in result.rejected_paid],
            "failed": [o.to_json() for o in result.failures],
        }
        if licences_for is not None:
            payload["licences"] = {
                "dir": str(licences_dir),
                "written": [str(p) for p in batch.written] if batch else [],
                "kept": [str(p) for p in batch.kept] if batch else [],
                "other_release": [str(p) for p in batch.other_release] if batch else [],
                **({"would_write": would_write} if dry_run else {})}
        _finish(payload, error, len(result.failures), as_json)
        return

    would = "would be " if dry_run else ""
    counts = [f"{len(result.accepted)} {would}accepted",
              f"{len(result.unpaid)} not in payments ({would}{unpaid_fate})"]
    if licences_for is not None:
        counts.append(f"{would_write} licences would be written" if dry_run
                      else f"{len(batch.written) if batch else 0} licences written")
    if result.failures:
        counts.append(f"{len(result.failures)} failed")
    echo(("Dry run, nothing changed: " if dry_run else "") + f"{repo}: " + ", ".join(counts))
    if result.accepted:
        echo(f"{'Would accept' if dry_run else 'Accepted'}: {_names(result.accepted)}")
    if result.unpaid:
        title = (f"Not in {paid.name} ({would}{unpaid_fate}): {len(result.unpaid)} request(s)")
        _print(_requests_table(result.unpaid[:_SHOWN], title, result.fate))
        if len(result.unpaid) > _SHOWN:
            echo(f"... and {len(result.unpaid) - _SHOWN} more (--json lists all)")
    if result.conflicts:
        echo(f"Left pending, the same payment email was claimed by several accounts "
                   f"(check by hand, then `followers accept`): {_names(result.conflicts)}")
    if result.already_accepted:
        echo(f"{len(result.already_accepted)} paid follower(s) already had access.")
    if result.rejected_paid:
        echo(f"Rejected earlier but in the payments (pass --recheck-rejected to accept "
                   f"them): {_names(result.rejected_paid)}")
    if batch is not None:
        echo(f"Licences: {len(batch.written)} written to {licences_dir}"
                   + (f"; {len(batch.kept)} kept, not overwritten (already there)"
                      if batch.kept else ""))
        if batch.other_release:
            echo(f"Warning: {len(batch.other_release)} kept licence file(s) are not for "
                       f"{bundle_id} {version} (e.g. {batch.other_release[0].name}): those "
                       "followers have no licence for this release; use another "
                       "--licences-dir", err=True)
    for o in result.failures:
        echo(f"✗ {o.user}: {o.action} failed: {o.detail}", err=True)
    _finish({}, error, len(result.failures), as_json)
