"""The universal gamepad action layout (buttons + two sticks) and its packing."""

from .layout import BUTTON_ORDERS, DEFAULT_BUTTON_ORDER, ActionLayout, LayoutError, UniversalVectorProcessor

__all__ = ["BUTTON_ORDERS", "DEFAULT_BUTTON_ORDER", "ActionLayout", "LayoutError", "UniversalVectorProcessor"]
