"""Reinforcement-learning search: the CompressionEnv (Gymnasium) and a TD3/DDPG agent (stable-baselines3)."""

from autocomp.optimizers.rl.agent import RLSearch
from autocomp.optimizers.rl.env import CompressionEnv, knob_value, layer_cost

__all__ = ["CompressionEnv", "RLSearch", "knob_value", "layer_cost"]
