"""Attacks in [0, 1] pixel space, one module each: PGD (:mod:`harness.attacks.pgd`), AutoAttack
(:mod:`harness.attacks.autoattack`, imported from there: it loads the pyautoattack package), and the
project's own check of an attack's points (:mod:`harness.attacks.confirm`). The threat model they
attack within is :mod:`harness.threat_model`'s."""

from harness.attacks.confirm import AttackResult, confirm_broken
from harness.attacks.pgd import ATTACK_LOSSES, pgd_attack, pgd_robust

__all__ = ["ATTACK_LOSSES", "AttackResult", "confirm_broken", "pgd_attack", "pgd_robust"]
