"""What clips exist: paths, ids, durations, content hashes, labels, splits."""

from manifests.build import build_manifest, scan_folder, sha256_of_file
from manifests.io import load_manifest, load_source, save_manifest
from manifests.labels import LabelTable, check_label_values, read_labels
from manifests.records import AUDIO_EXTENSIONS, EMOTIONS, ClipRecord, ManifestError

__all__ = [
    "AUDIO_EXTENSIONS",
    "EMOTIONS",
    "ClipRecord",
    "LabelTable",
    "ManifestError",
    "build_manifest",
    "check_label_values",
    "load_manifest",
    "load_source",
    "read_labels",
    "save_manifest",
    "scan_folder",
    "sha256_of_file",
]
