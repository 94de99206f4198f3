"""OmegaConf resolvers: one config value (the objective's goal) drives others; trial folder names stay one folder."""

from omegaconf import OmegaConf

GOALS = ("maximize", "minimize")


def by_goal(goal: str, if_maximize, if_minimize):
    """`${by_goal:${objective.goal},max,min}`: pick a value by the objective's goal."""
    if goal not in GOALS:
        from runner.errors import ConfigError

        raise ConfigError(f"objective.goal={goal!r} is not allowed; use one of: {', '.join(GOALS)}")
    return if_maximize if goal == "maximize" else if_minimize


def folder_name(text: str) -> str:
    """`${folder_name:${hydra.job.override_dirname}}`: a '/' in an override (objective.metric=val/f1)
    would nest the trial's folder; it becomes '_' (the exact overrides are in .hydra/overrides.yaml)."""
    return str(text).replace("/", "_")


def register_resolvers() -> None:
    for name, resolver in (("by_goal", by_goal), ("folder_name", folder_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
