"""Models: the config-driven float MoE-ViT (PyTorch), the model zoo, and the bit-exact
integer-only reference with its trace. Imports no hardware code."""
from .errors import AccelError, ConfigError, NumericsError, ShapeError
from .config import ModelConfig, load_config, zoo_names

__all__ = ["AccelError", "ConfigError", "NumericsError", "ShapeError", "ModelConfig",
           "load_config", "zoo_names"]
