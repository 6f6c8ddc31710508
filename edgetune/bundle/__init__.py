"""Build and verify signed edgetune bundles (layout and rules: ``mobile_bundle/SPEC.md``).

A bundle holds the quantised GGUFs, ``edgetune.json``, ``README.md``, ``eval.json``, ``eval.md``,
``eval.png``, ``reward.png``, ``report.html``, the persona files for phone apps and Ollama
(``edgetune.personas``) and ``model.sig``, and nothing else: unsigned extra files fail
verification.

``build`` writes a bundle and signs it again after an edit or a publish; ``verify`` checks one
as a follower's app does (and holds the manifest's schema); ``card`` draws its ``README.md``;
``files`` names its files and holds the dataclasses that describe it.
"""

from edgetune.bundle.build import (build_bundle, card_for_repo, resign_bundle,
                                   stamp_distribution)
from edgetune.bundle.card import GATED_EMAIL_FIELD
from edgetune.bundle.files import (EVAL_CHART_FILE, EVAL_FILE, EVAL_TABLE_FILE, MANIFEST_FILE,
                                   README_FILE, REPORT_FILE, REWARD_CHART_FILE, BundleInfo,
                                   BundleModel, VerifyResult, gguf_file_name)
from edgetune.bundle.verify import (SCHEMA_PATH, SCHEMA_VERSION, manifest_schema_error,
                                    path_escapes, read_manifest, schema_path, verify_bundle)

__all__ = ["EVAL_CHART_FILE", "EVAL_FILE", "EVAL_TABLE_FILE", "GATED_EMAIL_FIELD",
           "MANIFEST_FILE", "README_FILE", "REPORT_FILE", "REWARD_CHART_FILE", "SCHEMA_PATH",
           "SCHEMA_VERSION", "BundleInfo", "BundleModel", "VerifyResult", "build_bundle",
           "card_for_repo", "gguf_file_name", "manifest_schema_error", "path_escapes",
           "read_manifest", "resign_bundle", "schema_path", "stamp_distribution",
           "verify_bundle"]
