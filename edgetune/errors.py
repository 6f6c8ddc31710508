"""One error path: every user-facing failure is an EdgetuneError with a hint.

The CLI prints ``Error: <message>`` and ``Hint: <hint>`` and exits with the error's
``exit_code`` (1, or verify's codes listed in mobile_bundle/SPEC.md: 2-11 for the bundle,
12-16 for a licence); set ``EDGETUNE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations


class EdgetuneError(Exception):
    """A failure the user can act on: what went wrong, and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class DataError(EdgetuneError):
    """A dataset file is missing, empty or has a bad row."""


class ConfigError(EdgetuneError):
    """A setting or profile is invalid."""


class ModelError(EdgetuneError):
    """A model directory is missing, unreadable or of an unsupported architecture."""


class ToolchainError(EdgetuneError):
    """llama.cpp's tools or converter are missing or do not match the runtime."""


class ParityError(EdgetuneError):
    """The GGUF does not reproduce the Hugging Face model (tokenizer or logits)."""


class OutputExistsError(EdgetuneError):
    """Refusing to overwrite an existing output directory."""


class VerificationError(EdgetuneError):
    """A bundle failed verification. ``path`` names the offending file."""

    def __init__(self, message: str, hint: str | None = None, *, path: str | None = None,
                 exit_code: int = 2):
        super().__init__(message, hint)
        self.path = path
        self.exit_code = exit_code


class KeyFileError(EdgetuneError):
    """A signing key is missing, unreadable or protected by a wrong passphrase."""
