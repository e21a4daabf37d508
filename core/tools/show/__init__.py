"""Seeing what a schedule does (moved into a package; split by concern next)."""

from vtsched.core.tools.show.run import (
    FADE,
    FIGURES,
    GROUP_COLOURS,
    TINT,
    Show,
    check_attention_layers,
    image_views,
    parse_layers,
    show,
    tint,
    token_owner,
)

__all__ = [
    "FADE",
    "FIGURES",
    "GROUP_COLOURS",
    "TINT",
    "Show",
    "check_attention_layers",
    "image_views",
    "parse_layers",
    "show",
    "tint",
    "token_owner",
]
