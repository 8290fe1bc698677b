"""Attacks in [0, 1] pixel space, one module each: PGD (:mod:`harness.attacks.pgd`)."""

from harness.attacks.pgd import ATTACK_LOSSES, eval_mode, pgd_attack, pgd_robust

__all__ = ["ATTACK_LOSSES", "eval_mode", "pgd_attack", "pgd_robust"]
