"""The universal gamepad layout (buttons + two sticks), console profiles, and the processor that
turns recordings and predictions into and out of action vectors."""

from .layout import BUTTON_ORDERS, DEFAULT_BUTTON_ORDER, ActionLayout, LayoutError
from .processor import STICK_RANGES, ColumnBinding, UniversalVectorProcessor, detect_stick_range
from .profiles import PROFILES, ConsoleProfile, detect_profile, normalize_column

__all__ = [
    "BUTTON_ORDERS",
    "DEFAULT_BUTTON_ORDER",
    "PROFILES",
    "STICK_RANGES",
    "ActionLayout",
    "ColumnBinding",
    "ConsoleProfile",
    "LayoutError",
    "UniversalVectorProcessor",
    "detect_profile",
    "detect_stick_range",
    "normalize_column",
]
