"""Per-follower licences and revocation lists, signed offline with the creator's bundle key.

A licence is a DSSE envelope over a small JSON payload that binds one follower to one
``bundle_id`` and exact ``version``; a revocation list is a DSSE envelope listing revoked
licence ids. Both are signed with the same ECDSA P-256 key as ``model.sig``, so an app that
holds ``creator.pub`` can check everything offline. Formats and exit codes (12-16, after the
bundle's 2-11): ``mobile_bundle/SPEC.md`` ("Licences").

``dsse`` seals and opens the envelopes, ``licence`` issues and verifies licences,
``revocations`` keeps the revocation list and ``floor`` the newest sequence this machine has
seen (an older list is refused); ``formats`` holds what they share.
"""

from edgetune.licences.formats import (
    EXIT_BAD_SIGNATURE,
    EXIT_EXPIRED,
    EXIT_MALFORMED,
    EXIT_OTHER_BUNDLE,
    EXIT_REVOKED,
)
from edgetune.licences.licence import (
    LICENCE_SUFFIX,
    LICENCE_TYPE,
    LICENCE_VERSION,
    LicenceInfo,
    issue_for_bundle,
    issue_from_csv,
    issue_licence,
    licence_id_of,
    read_licence,
    safe_file_stem,
    verify_licence,
    write_licence,
)
from edgetune.licences.revocations import (
    REVOCATIONS_TYPE,
    REVOCATIONS_VERSION,
    Revocation,
    RevocationList,
    load_revocations,
    newest_revocations,
    revoke,
)

__all__ = [
    "EXIT_BAD_SIGNATURE", "EXIT_EXPIRED", "EXIT_MALFORMED", "EXIT_OTHER_BUNDLE", "EXIT_REVOKED",
    "LICENCE_SUFFIX", "LICENCE_TYPE", "LICENCE_VERSION", "LicenceInfo", "issue_for_bundle",
    "issue_from_csv", "issue_licence", "licence_id_of", "read_licence", "safe_file_stem",
    "verify_licence", "write_licence", "REVOCATIONS_TYPE", "REVOCATIONS_VERSION", "Revocation",
    "RevocationList", "load_revocations", "newest_revocations", "revoke",
]
