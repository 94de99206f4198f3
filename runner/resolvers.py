"""OmegaConf resolvers: one config value (the objective's goal) drives others; trial folder names stay one folder."""

import hashlib

from omegaconf import OmegaConf

GOALS = ("maximize", "minimize")
# a folder name may have 255 bytes; this leaves room for the job number in front of it
MAX_FOLDER_NAME_BYTES = 200


def by_goal(goal: str, if_maximize, if_minimize):
    """`${by_goal:${objective.goal},max,min}`: pick a value by the objective's goal."""
    if goal not in GOALS:
        from runner.errors import ConfigError

        raise ConfigError(f"objective.goal={goal!r} is not allowed; use one of: {', '.join(GOALS)}")
    return if_maximize if goal == "maximize" else if_minimize


def folder_name(text: str) -> str:
    """`${folder_name:${hydra.job.override_dirname}}`: a '/' in an override (objective.metric=val/f1)
    would nest the trial's folder; it becomes '_' (the exact overrides are in .hydra/overrides.yaml).
    A name longer than the filesystem allows (many overrides, a PBT mutation space) is cut to
    MAX_FOLDER_NAME_BYTES, ending in a hash of the whole name so that trials stay apart."""
    name = str(text).replace("/", "_")
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_FOLDER_NAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    return encoded[:MAX_FOLDER_NAME_BYTES - 9].decode("utf-8", errors="ignore") + "_" + digest


def register_resolvers() -> None:
    for name, resolver in (("by_goal", by_goal), ("folder_name", folder_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
