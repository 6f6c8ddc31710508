"""pull: a follower downloads a published bundle (all of it, or one quant) and verifies it.

Nothing is reported as downloaded until the signature, every file's hash and the manifest have
checked out against the creator's public key (and the follower's licence, when given). Files
land in ``<out>.partial`` and are moved to ``<out>`` only then; a bundle that fails verification
is deleted. A licence is checked against the newest revocation list: ``--revocations``, else
the ``revocations.json`` the creator published in the repo, never one older than the repo's or
than one this machine has seen (``licences.newest_revocations``). An interrupted download resumes: the partial folder (with huggingface_hub's own
resume data) is kept when the network, not the bundle, failed.

The creator's key: ``--key`` the first time (from the creator, with the licence); it is then
remembered for that repo in ``~/.edgetune/trusted/`` and used for later pulls, and a different
key for the same repo is refused (a key change is something to confirm with the creator).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetune import hub, keys, paths
from edgetune.errors import ConfigError, EdgetuneError, OutputExistsError, VerificationError

MANIFEST = "edgetune.json"
# The creator's signed revocation list, published beside the bundle (not one of its signed
# files: revoking must not re-sign the model): `hf upload USER/NAME revoked.json revocations.json`.
REVOCATIONS_FILE = "revocations.json"


@dataclass(frozen=True)
class PullResult:
    repo: str
    revision: str  # the commit downloaded
    path: Path
    bundle_id: str
    version: str
    quants: tuple[str, ...]  # the GGUFs downloaded
    files: int
    bytes: int
    key_id: str
    licence_follower: str | None = None
    licence_expires: str | None = None


def parse_target(target: str) -> tuple[str, str | None]:
    """``USER/NAME[:QUANT]`` -> (repo, quant or None)."""
    repo, _, quant = target.partition(":")
    hub.check_repo_id(repo)
    if quant and not re.fullmatch(r"[A-Za-z0-9_.-]+", quant):
        raise ConfigError(f"'{quant}' is not a quant name", hint="e.g. USER/NAME:Q4_K_M")
    return repo, quant or None


def _pinned_key(repo: str) -> Path:
    return paths.home() / "trusted" / (repo.replace("/", "__") + ".pub")


def creator_key(repo: str, given: Path | None) -> Path:
    """The public key to verify ``repo`` with: ``given`` (remembered), or the remembered one."""
    pinned = _pinned_key(repo)
    if given is None:
        if pinned.is_file():
            return pinned
        raise ConfigError(f"{repo}: the creator's public key is needed to verify the download",
                          hint="pass --key creator.pub (the creator shares it with your licence); "
                               "it is remembered for later pulls of this repo")
    given = Path(given)
    if not given.is_file():
        raise ConfigError(f"{given}: public key not found", hint="pass the creator's .pub file")
    if pinned.is_file() and pinned.read_bytes().strip() != given.read_bytes().strip():
        raise ConfigError(
            f"{repo}: this key is not the one used before for this repo "
            f"(key id {keys.key_id_of(given)[:16]}…, remembered {keys.key_id_of(pinned)[:16]}…)",
            hint=f"check with the creator that the key changed; then delete {pinned}")
    return given


def _remember(repo: str, key: Path) -> None:
    pinned = _pinned_key(repo)
    if not pinned.is_file():
        pinned.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(key, pinned)


def pull(target: str, *, out: Path | None = None, key: Path | None = None,
         licence: Path | None = None, revocations: Path | None = None,
         revision: str | None = None, token: str | None = None, overwrite: bool = False,
         on_note: Callable[[str], None] | None = None) -> PullResult:
    from edgetune.bundle import verify_bundle

    note = on_note or (lambda _msg: None)
    repo, quant = parse_target(target)
    public_key = creator_key(repo, key)
    out = Path(out) if out else Path(repo.split("/")[1] + (f"-{quant}" if quant else ""))
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists", hint="choose another --out or pass --overwrite")
    staging = out.with_name(out.name + ".partial")
    if licence is not None:  # its format and signature before any download (binding: after)
        from edgetune.licences import read_licence

        read_licence(licence, public_key)
    client = hub.api(hub.resolve_token(token))
    with hub.errors(repo):
        info = hub.retrying(lambda: client.model_info(repo, revision=revision or "main"),
                            what="reading the repo", on_retry=note)
        sha = info.sha
        files = sorted(s.rfilename for s in info.siblings or [])
        if MANIFEST not in files:
            raise EdgetuneError(f"{repo}: not an edgetune bundle (no {MANIFEST})",
                                hint="pull a repo published with edgetune publish")
        staging.mkdir(parents=True, exist_ok=True)
        try:
            manifest = _read_json(_download(client, repo, sha, MANIFEST, staging, note))
        except VerificationError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        wanted = _select(files, manifest, quant, repo)
        note(f"downloading {len(wanted)} files of {repo} at {sha[:12]}")
        for rel in wanted:
            _download(client, repo, sha, rel, staging, note)
        carried = None
        if licence is not None:  # the repo's current list: from main, whatever --revision says
            head = info if revision in (None, "main") else hub.retrying(
                lambda: client.model_info(repo, revision="main"), what="reading the repo",
                on_retry=note)
            if REVOCATIONS_FILE in {s.rfilename for s in head.siblings or []}:
                lists = staging.with_name(staging.name + "-revocations")
                carried = (_download(client, repo, head.sha, REVOCATIONS_FILE, lists, note),
                           head.sha)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # the client's resume data: not signed
    try:
        result = verify_bundle(staging, public_key, partial=quant is not None)
        info_licence = None
        if licence is not None:
            from edgetune.licences import verify_licence

            info_licence = verify_licence(licence, public_key, bundle_id=result.bundle_id,
                                          bundle_version=result.version,
                                          revocations=_newest_revocations(
                                              revocations, public_key, carried, repo))
    except Exception:  # no network here: whatever failed, never leave a bundle that failed
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + "-revocations"), ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _remember(repo, public_key)
    pulled = tuple(a["quant"] for a in manifest["artifacts"] if (out / a["path"]).is_file())
    return PullResult(repo=repo, revision=sha, path=out, bundle_id=result.bundle_id,
                      version=result.version, quants=pulled, files=result.files,
                      bytes=result.bytes, key_id=result.key_id,
                      licence_follower=info_licence.follower if info_licence else None,
                      licence_expires=info_licence.expires if info_licence else None)


def _newest_revocations(given: Path | None, public_key: Path,
                        carried: tuple[Path, str] | None, repo: str):
    """The list the licence is checked against: never older than the repo's (``carried``: the
    downloaded file and the commit) or than one this machine has seen
    (``licences.newest_revocations``)."""
    from edgetune.licences import load_revocations, newest_revocations

    if carried is None:
        return newest_revocations(given, public_key)
    path, sha = carried
    try:
        repo_list = load_revocations(path, public_key)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return newest_revocations(given, public_key,
                              carried=(repo_list, f"{repo} {REVOCATIONS_FILE} at {sha[:12]}"))


def _read_json(path: Path) -> dict:
    from edgetune import strict_json

    try:  # unverified yet: read as strictly as verify will
        data = strict_json.loads(strict_json.read_bytes(path, strict_json.MANIFEST),
                                 strict_json.MANIFEST)
    except (OSError, ValueError) as e:
        raise VerificationError(f"{MANIFEST}: {e}", "Ask the creator to publish "
                                "the bundle again.", path=MANIFEST, exit_code=9) from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise VerificationError(f"{MANIFEST}: no artifact list", "Ask the creator to publish the "
                                "bundle again.", path=MANIFEST, exit_code=9)
    return data


def _select(files: list[str], manifest: dict, quant: str | None, repo: str) -> list[str]:
    """Every file of the repo, but only ``quant``'s GGUF of the listed ones when a quant is asked."""
    ggufs = {a.get("path"): str(a.get("quant")) for a in manifest["artifacts"] if isinstance(a, dict)}
    wanted = [f for f in files if f not in (MANIFEST, ".gitattributes", REVOCATIONS_FILE)]
    if quant is None:
        return wanted
    match = [p for p, q in ggufs.items() if q.lower() == quant.lower()]
    if not match:
        raise ConfigError(f"{repo} has no {quant} quant",
                          hint="available: " + ", ".join(sorted(set(ggufs.values()))))
    return [f for f in wanted if f not in ggufs or f in match]


def _download(client, repo: str, sha: str, rel: str, staging: Path, note) -> Path:
    return Path(hub.retrying(
        lambda: client.hf_hub_download(repo, rel, revision=sha, local_dir=staging),
        what=f"downloading {rel}", on_retry=note))
