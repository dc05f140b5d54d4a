"""NitroGen Finetuner: fine-tune NVIDIA's NitroGen and export checkpoints the official player runs."""

from .actions import BUTTON_ORDERS, ActionLayout, UniversalVectorProcessor
from .policy import NitroGenPolicy, __version__, load_policy

__all__ = [
    "BUTTON_ORDERS",
    "ActionLayout",
    "NitroGenPolicy",
    "UniversalVectorProcessor",
    "__version__",
    "load_policy",
]
