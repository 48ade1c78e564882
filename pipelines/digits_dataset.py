"""Old import path of the `uci_digits` tfds builder, kept so existing imports work.

The builder lives in `pipelines.data.digits`; importing either module registers
``uci_digits`` once (the class is defined only there).

Example:
    >>> import pipelines.digits_dataset  # registers "uci_digits"
    >>> pipelines.digits_dataset.BUILDER_NAME
    'uci_digits'
"""

from pipelines.data.digits import (  # noqa: F401 -- re-exports.
    BUILDER_NAME,
    HOLDOUT_FRACTION,
    SPLIT_SEED,
    UciDigits,
    split_indices,
    to_pixel_scale,
)
