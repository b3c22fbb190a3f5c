"""Command-line data set specifications: one string that names a data set and how to read it.

Accepted forms (``split`` is the split asked for by the caller, e.g. ``"train"`` or ``"val"``):

* ``coco:<annotations.json>:<images_dir>`` -- a COCO file (the file IS the split; ``split`` is unused: name
  each split's file with a spec of its own, e.g. training ``--data`` and validation ``--val-data``);
* ``voc:<root>`` -- Pascal VOC, reading ``ImageSets/Main/<split>.txt``; ``voc:<root>:<name>`` reads
  ``<name>.txt`` instead; a root without ``ImageSets`` (``annotations/*.xml`` + ``images/``) is one split of
  all its images, whatever ``split`` is asked for;
* ``yolo:<data.yaml>`` -- YOLO, reading the ``<split>`` entry of the YAML; ``yolo:<data.yaml>:<name>``
  reads the ``<name>`` entry instead;
* ``synthetic`` or ``synthetic:key=value,...`` with keys ``images`` (default 128), ``size`` (image side,
  default 128), ``seed`` (default 0), ``objects`` (most objects per image, default 6) and ``empty``
  (fraction of images without objects, default 0.1).  The ``train`` split uses ``seed`` itself; any other
  split uses a seed derived from ``(seed, split)``, so the splits are different images of the same
  distribution.
"""

from __future__ import annotations

import zlib

import numpy as np

from .dataset import DetectionDataset
from .readers import read_coco, read_voc, read_yolo
from .synthetic import SyntheticShapes

ACCEPTED_FORMS = (
    "coco:<annotations.json>:<images_dir>",
    "voc:<root>[:<split>]",
    "yolo:<data.yaml>[:<split>]",
    "synthetic[:images=N,size=S,seed=K,objects=M,empty=F]",
)
_SYNTHETIC_DEFAULTS: dict[str, float] = {"images": 128, "size": 128, "seed": 0, "objects": 6, "empty": 0.1}


def synthetic_split_seed(seed: int, split: str) -> int:
    """Seed of ``split`` of a synthetic data set: ``seed`` for ``"train"``, else one derived from both."""
    if split == "train":
        return seed
    entropy = np.random.SeedSequence([seed, zlib.crc32(split.encode("utf-8"))])
    return int(entropy.generate_state(1)[0])


def _bad_spec(spec: str, reason: str) -> ValueError:
    forms = "\n  ".join(ACCEPTED_FORMS)
    return ValueError(f"bad data set spec {spec!r}: {reason}. Accepted forms:\n  {forms}")


def _parse_synthetic_options(spec: str, options: str) -> dict[str, float]:
    values = dict(_SYNTHETIC_DEFAULTS)
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or key not in values:
            raise _bad_spec(spec, f"unknown synthetic option {item!r} (keys: {', '.join(values)})")
        try:
            values[key] = float(text) if key == "empty" else int(text)
        except ValueError as error:
            raise _bad_spec(spec, f"synthetic option {key!r} needs a number, got {text!r}") from error
    return values


def parse_data_spec(spec: str, split: str) -> DetectionDataset:
    """Read the data set described by ``spec`` (see the module docstring) for ``split``.

    Raises:
        ValueError: for an unknown prefix or a malformed spec; the message lists the accepted forms.
        DatasetError: (a ``ValueError``) when the named files are missing or malformed.
    """
    kind, _, rest = spec.partition(":")
    if kind == "coco":
        parts = rest.split(":")
        if len(parts) != 2 or not all(parts):
            raise _bad_spec(spec, "coco needs an annotation file and an images folder")
        return read_coco(parts[0], parts[1])
    if kind in ("voc", "yolo"):
        parts = rest.split(":")
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise _bad_spec(spec, f"{kind} needs a path and optionally a split name")
        chosen_split = parts[1] if len(parts) == 2 else split
        reader = read_voc if kind == "voc" else read_yolo
        return reader(parts[0], chosen_split)
    if kind == "synthetic":
        options = _parse_synthetic_options(spec, rest)
        try:
            return SyntheticShapes(
                int(options["images"]),
                image_size=int(options["size"]),
                seed=synthetic_split_seed(int(options["seed"]), split),
                max_objects=int(options["objects"]),
                empty_fraction=float(options["empty"]),
            )
        except ValueError as error:
            raise _bad_spec(spec, str(error)) from error
    raise _bad_spec(spec, f"unknown kind {kind!r}")
