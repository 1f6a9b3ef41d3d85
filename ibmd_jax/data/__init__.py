"""Data: grain pipelines of image pairs (`pipelines`), their sources and the degradations.

`pipelines` holds the sources (scikit-image photographs, folders, pix2pix pairs, DIODE, local TFDS,
in-memory arrays) and the grain MapDataset → IterDataset pipeline; `degradations` the corruptions
that make xT from x0 (super-resolution, JPEG, inpainting masks, edges).
"""
from ibmd_jax.data import degradations
from ibmd_jax.data.pipelines import (KINDS, PAIRED_KINDS, SKIMAGE_TEST, SKIMAGE_TRAIN, SPLITS,
                                     load_eval_set, load_skimage_photo, make_dataset, map_dataset,
                                     num_examples, skimage_test_crops)

__all__ = ["degradations", "KINDS", "PAIRED_KINDS", "SKIMAGE_TEST", "SKIMAGE_TRAIN", "SPLITS",
           "load_eval_set", "load_skimage_photo", "make_dataset", "map_dataset", "num_examples",
           "skimage_test_crops"]
