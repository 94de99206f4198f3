"""OmegaConf resolvers that let one config value (the objective's goal) drive others."""

from omegaconf import OmegaConf

GOALS = ("maximize", "minimize")


def by_goal(goal: str, if_maximize, if_minimize):
    """`${by_goal:${objective.goal},max,min}`: pick a value by the objective's goal."""
    if goal not in GOALS:
        from runner.errors import ConfigError

        raise ConfigError(f"objective.goal={goal!r} is not allowed; use one of: {', '.join(GOALS)}")
    return if_maximize if goal == "maximize" else if_minimize


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("by_goal"):
        OmegaConf.register_new_resolver("by_goal", by_goal)
