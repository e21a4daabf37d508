"""Seeing what a schedule does: its tokens put back on the image, layer by layer.

:func:`show` runs one image and question under a policy (any policy, built-in or plugin, on any
family) with a :class:`~vtsched.core.tools.trace.TracingEngine`, and returns a :class:`Show`: the
data (which visual tokens each stream carried in each run of layers, the partition, the token
counts per layer, fusion weights, optionally the last prompt token's attention) and matplotlib
figures drawn from it:

- ``partition``: each group's tokens tinted on the image;
- ``kept``: the tokens each stream carries in each run of layers (one panel per run and stream;
  what survives each ``keep_top``; carried text copies counted in the title);
- ``flow``: visual tokens per stream against layer, the schedule's events marked;
- ``fusion``: the weight each stream got per fused token, where the schedule fuses;
- ``attention``: where each live stream's last prompt token looks at the layers asked for.

Tokens go back on the image through the adapter's pixel boxes (``Sample.pixel_boxes``, the one
pixel-to-token mapping, :mod:`vtsched.core.pixels`): a pixel belongs to the token whose box holds its
centre. Families whose tokens overlap on the image are drawn in separate *views*: LLaVA-NeXT's
overview tile and its high-resolution tiles (after unpadding); LLaVA-1.5 and Qwen's merged patches
are one view each. Tinting is exact: a tinted pixel is ``round((1 - TINT) * pixel + TINT * colour)``,
every other pixel is faded to ``round(FADE * pixel + (1 - FADE) * 255)``, so the tinted pixels of a
panel are exactly the boxes of its tokens (``tests/cli/test_show.py`` checks this on every family).

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot (no global state, no
backend to choose): a notebook displays them, :meth:`Show.save` writes one PNG per figure, the
combined sheet and the JSON behind them.

The package's modules: ``on_image`` (tokens on the image: views, owners, tinting), ``data`` (:class:`Show`:
the data, its figures and files), ``run`` (:func:`show`, the ``--attention`` layers), ``drawing`` (the
figures).
"""

from vtsched.core.tools.show.data import Show
from vtsched.core.tools.show.drawing import FIGURES
from vtsched.core.tools.show.on_image import FADE, GROUP_COLOURS, TINT, image_views, tint, token_owner
from vtsched.core.tools.show.run import check_attention_layers, parse_layers, show

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
