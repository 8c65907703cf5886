"""Model cards for trained DASCO folders."""

from .model_card import write_model_card


__all__ = ["write_model_card"]
