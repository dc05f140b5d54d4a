"""Know whether a fine-tune worked: open-loop metrics, figures, button-order checks, predictions."""
