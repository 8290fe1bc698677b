"""Verify a torch classifier on an input box: the public verification API (see :mod:`.api`), and
properties beyond "the label wins" (linear output constraints, :mod:`.properties`)."""

from harness.verification.api import Box, VerificationResult, Verifier, VerifySettings
from harness.verification.properties import LinearProperty, PropertyVerifier

__all__ = ["Box", "LinearProperty", "PropertyVerifier", "VerificationResult", "Verifier", "VerifySettings"]
