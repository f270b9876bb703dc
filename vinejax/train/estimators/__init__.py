"""Value estimators, the registry behind `algo`: where an RL iteration's advantages come from.

    "vineppo"   MC values of every step state (`mc.MonteCarlo`; `mc.AdaptiveMonteCarlo` with
                vineppo.adaptive.enabled) and VinePPO's step advantages
    "ppo"       a critic and GAE (`critic.CriticGAE`)
    "grpo"      the group's (R − mean) / std (`group.GRPO`)
    "rloo"      the group's leave-one-out mean (`group.RLOO`)
    "pkg.module:Name"   a user's estimator: `Name(cfg)` returns an `Estimator` (`base`); the module
                is imported from PYTHONPATH or the config file's folder (`import_dir`)

`get_estimator(cfg)` builds the one `cfg.algo` names; the RL stage runs it for every algo that is
not a stage of its own (`config.STAGES`: sft, restem, dpo_positive).
"""
from __future__ import annotations

from vinejax.config import STAGES
from vinejax.errors import ConfigError
from vinejax.plugins import load_object
from vinejax.train.estimators.base import Estimate, Estimator, Rollouts

BUILTIN = {
    "vineppo": "vinejax.train.estimators.mc:vineppo",
    "ppo": "vinejax.train.estimators.critic:CriticGAE",
    "grpo": "vinejax.train.estimators.group:GRPO",
    "rloo": "vinejax.train.estimators.group:RLOO",
}


def get_estimator(cfg) -> Estimator:
    """The estimator `cfg.algo` names (a name in BUILTIN or "pkg.module:Name"), built from `cfg`
    and checked against it; a one-line `ConfigError` naming `algo` for anything else."""
    name = cfg.algo
    factory = load_object(BUILTIN.get(name, name), "algo", import_dir=cfg.import_dir,
                          known=", ".join(STAGES + tuple(BUILTIN)))
    try:
        estimator = factory(cfg)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"config key 'algo' {name!r}: building the estimator failed: "
                          f"{type(error).__name__}: {error}") from None
    if not isinstance(estimator, Estimator):
        raise ConfigError(f"config key 'algo' {name!r} gave a {type(estimator).__name__}, not a "
                          f"vinejax.train.estimators.Estimator")
    estimator.validate(cfg)
    return estimator


__all__ = ["BUILTIN", "Estimate", "Estimator", "Rollouts", "get_estimator"]
