"""The NitroGen architecture, its configuration and its checkpoint format."""

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .configuration import CheckpointConfig, DiTConfig, ModalityConfig, NitroGenConfig, TokenizerConfig, VLMixerConfig
from .modeling import NitroGenModel

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "DiTConfig",
    "ModalityConfig",
    "NitroGenConfig",
    "NitroGenModel",
    "TokenizerConfig",
    "VLMixerConfig",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
