"""Verify a torch classifier on an input box: the public verification API (see :mod:`.api`)."""

from harness.verification.api import Box, VerificationResult, Verifier, VerifySettings

__all__ = ["Box", "VerificationResult", "Verifier", "VerifySettings"]
