"""Stand-in of modules/sd_samplers.py: the preview helpers it re-exports from sd_samplers_common."""

from modules.sd_samplers_common import sample_to_image, samples_to_image_grid  # noqa: F401
