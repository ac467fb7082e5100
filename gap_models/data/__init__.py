"""Data: read a source, decode every file, split by content hash, resize once, cache.

One module per step, each importable on its own:

- ``sources``: list, read and fingerprint a tfds, zip or folder source; download it.
- ``decoding``: one Pillow decode path for every file, and a thread pool for many files.
- ``selection``: the content-hash split and order, and which files are used under
  ``max_images``.
- ``cache``: ``preprocess`` once into an atomically written cache; ``load_split`` from it.
- ``pipeline``: the ``tf.data`` input pipeline over the cached arrays.

Everything callers use is re-exported here, so ``from gap_models.data import X`` works
whichever module ``X`` lives in. To patch a function that the package itself calls, patch
it in the module that calls it (e.g. ``gap_models.data.decoding.decode_image``): patching
this package's name does not change what the other modules see. Nothing here does I/O at
import time, and TensorFlow is imported only when a tfds source or dataset is used.
"""

from gap_models.data.cache import (
    PREPROCESS_VERSION,
    PreparedData,
    cache_key,
    cached_class_names,
    default_cache_dir,
    load_ids,
    load_split,
    load_train,
    local_cache,
    preprocess,
    read_manifest,
)
from gap_models.data.decoding import MAX_DECODE_PIXELS, ImageDecodeError, decode_image
from gap_models.data.network import (
    NETWORK_TIMEOUT_SECONDS,
    TFDS_HOST,
    OfflineError,
    check_network,
)
from gap_models.data.pipeline import make_dataset
from gap_models.data.selection import (
    SPLIT_NAMES,
    TRAIN_SPLIT,
    ProgressCallback,
    assign_split,
    hash_order,
    train_indices,
)
from gap_models.data.sources import (
    TFDS_CLASS_NAMES,
    DataError,
    SourceFile,
    SourceLayout,
    class_names,
    download,
    fingerprint_source,
    iter_source,
    list_source,
    scan_source,
)

__all__ = [
    "MAX_DECODE_PIXELS",
    "NETWORK_TIMEOUT_SECONDS",
    "PREPROCESS_VERSION",
    "SPLIT_NAMES",
    "TRAIN_SPLIT",
    "TFDS_CLASS_NAMES",
    "TFDS_HOST",
    "DataError",
    "ImageDecodeError",
    "OfflineError",
    "PreparedData",
    "ProgressCallback",
    "SourceFile",
    "SourceLayout",
    "assign_split",
    "cache_key",
    "cached_class_names",
    "check_network",
    "class_names",
    "decode_image",
    "default_cache_dir",
    "download",
    "fingerprint_source",
    "hash_order",
    "iter_source",
    "list_source",
    "load_ids",
    "load_split",
    "load_train",
    "local_cache",
    "make_dataset",
    "preprocess",
    "read_manifest",
    "scan_source",
    "train_indices",
]
