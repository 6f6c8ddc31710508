"""Talking to the Hugging Face Hub: tokens, the client, retries, and errors a user can act on.

``publish``, ``followers`` and ``pull`` all go through here, on ``huggingface_hub``'s HfApi
(which reads ``HF_ENDPOINT``). Tokens come only from ``--token``, ``HF_TOKEN`` or the standard
token file (``hf auth login``) and are never printed, logged or written anywhere: error messages
are built from status codes and repo names, and :func:`redact` scrubs anything token-shaped
from text we did not write ourselves.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from edgetune.errors import EdgetuneError

T = TypeVar("T")

# Waits between attempts of a call that failed on the network or with 429/5xx. huggingface_hub
# already retries LFS transfers and a few calls itself; this covers the others (repo info,
# tree, tags, commits, access requests), all safe to repeat.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
_TOKEN = re.compile(r"hf_\w{6,}", re.ASCII)  # letters, digits and "_" (tokens may hold "_")
LOGIN_HINT = ("set HF_TOKEN, pass --token, or run `hf auth login` (the token needs write access "
               "to publish)")


class HubError(EdgetuneError):
    """The Hub refused or could not be reached."""


class HubUnreachable(HubError):
    """No answer from the Hub at all (network down, DNS, timeout): nothing was refused."""


def redact(text: str) -> str:
    return _TOKEN.sub("hf_***", text)


def resolve_token(explicit: str | None) -> str | None:
    """``--token``, else ``HF_TOKEN``, else the token file of ``hf auth login``; None: anonymous."""
    if explicit:
        return explicit.strip()
    from huggingface_hub import get_token

    return get_token()


def api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token or False, library_name="edgetune")


def repo_url(repo: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo}"


def check_repo_id(repo: str) -> str:
    """``user/name`` as the Hub accepts it, or a usage error."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", repo or "") \
            or ".." in repo or "--" in repo or repo.endswith((".", "-")):
        raise HubError(f"'{repo}' is not a Hugging Face repo id",
                       hint="use USER/NAME, e.g. coach-ada/marathon-coach")
    return repo


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def transient(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    status = status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def retrying(call: Callable[[], T], *, what: str, on_retry: Callable[[str], None] | None = None,
             retry: bool = True) -> T:
    """``call()``, again after a pause when the network or the Hub failed for a moment
    (``retry=False``: once, for a call whose failure is not worth waiting for)."""
    for attempt, pause in enumerate((*(BACKOFF_S if retry else ()), None), start=1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not transient
            if pause is None or not transient(exc):
                raise
            if on_retry:
                on_retry(f"{what}: {_describe(exc)}; trying again in {pause:g} s "
                         f"(attempt {attempt + 1} of {len(BACKOFF_S) + 1})")
            time.sleep(pause)
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    status = status_of(exc)
    return f"HTTP {status}" if status else type(exc).__name__


@contextlib.contextmanager
def errors(repo: str, *, writing: bool = False) -> Iterator[None]:
    """Turn the client's exceptions into HubErrors that say what to do (no tracebacks)."""
    import httpx
    from huggingface_hub import errors as hf

    try:
        yield
    except EdgetuneError:
        raise
    except hf.GatedRepoError as exc:
        raise HubError(f"{repo}: access to this gated repo has not been granted to your account",
                       hint=f"request access on {repo_url(repo)} and wait for the creator to "
                            "accept it; then pull with the token of that account") from exc
    except hf.RepositoryNotFoundError as exc:
        raise HubError(f"{repo}: repository not found, or private and not visible with this token",
                       hint="check the name; for a private or gated repo " + LOGIN_HINT) from exc
    except hf.RevisionNotFoundError as exc:
        raise HubError(f"{repo}: that revision does not exist",
                       hint="leave out --revision for the newest, or pick a tag from the repo "
                            "page") from exc
    except hf.EntryNotFoundError as exc:
        raise HubError(f"{repo}: a file the bundle lists is missing from the repo",
                       hint="ask the creator to publish the bundle again") from exc
    except hf.HfHubHTTPError as exc:
        status = status_of(exc)
        if status == 401:
            raise HubError("the Hugging Face token was refused (HTTP 401)",
                           hint=LOGIN_HINT) from exc
        if status == 403:
            raise HubError(f"{repo}: this token may not {'write to' if writing else 'read'} it "
                           "(HTTP 403)",
                           hint="use a token with write access to the repo's owner"
                           if writing else LOGIN_HINT) from exc
        server = getattr(exc, "server_message", "") or ""
        raise HubError(f"{repo}: the Hub answered HTTP {status}"
                       + (f": {redact(server)[:300]}" if server else ""),
                       hint="try again later; a rerun continues where this one stopped") from exc
    except (httpx.TransportError, ConnectionError, TimeoutError) as exc:
        raise HubUnreachable(f"cannot reach the Hugging Face Hub ({type(exc).__name__})",
                       hint="check the network (and HF_ENDPOINT if set); a rerun continues where "
                            "this one stopped") from exc


def whoami(client: Any, on_retry: Callable[[str], None] | None = None, *,
           retry: bool = True) -> str:
    """The token's user name (one call; refuses an anonymous client)."""
    if not client.token:
        raise HubError("no Hugging Face token found", hint=LOGIN_HINT)
    info = retrying(lambda: client.whoami(), what="checking the token", on_retry=on_retry,
                    retry=retry)
    return info["name"]
