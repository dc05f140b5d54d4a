"""The built-in games (runner: jump with SOUTH; collector: steer with the left stick), their
recorder and closed-loop rollouts, so the whole pipeline runs with no emulator and no data."""

from .base import GamepadAction
from .collector import Collector
from .runner import Runner

GAMES = {"runner": Runner, "collector": Collector}

__all__ = ["GAMES", "Collector", "GamepadAction", "Runner"]
