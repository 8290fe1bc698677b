"""Attacks in [0, 1] pixel space, one module each: PGD (:mod:`harness.attacks.pgd`), AutoAttack
(:mod:`harness.attacks.autoattack`, imported from there: it loads the pyautoattack package), and the
project's own check of an attack's points (:mod:`harness.attacks.confirm`)."""

from harness.attacks.confirm import AttackResult, clip_to_threat_model, confirm_broken, in_threat_model
from harness.attacks.pgd import ATTACK_LOSSES, eval_mode, pgd_attack, pgd_robust

__all__ = [
    "ATTACK_LOSSES", "AttackResult", "clip_to_threat_model", "confirm_broken", "eval_mode", "in_threat_model",
    "pgd_attack", "pgd_robust",
]
