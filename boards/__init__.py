"""Board descriptions: one YAML file per board, validated on load."""
from .board import BOARD_DIR, RESOURCE_KINDS, Board, Memory, Resources, board_names, load_board

__all__ = ["BOARD_DIR", "RESOURCE_KINDS", "Board", "Memory", "Resources", "board_names", "load_board"]
