"""The feature store: audio -> backbone features in a checked Zarr v3 store.

Public API (imported on first use, so ``import featurestore`` stays light):

    from featurestore import FeatureStore, extract, ExtractOptions
    store = FeatureStore.open("feats.zarr")
    summary = extract(load_source("audio/"), "feats.zarr", ExtractOptions.of(model="ckpt"))

See the docs' "Python API" page (docs/python-api.md) for a walk through.
"""

from __future__ import annotations

from featurestore.exports import lazy_exports

_EXPORTS = {
    "FeatureStore": "featurestore.store",
    "StoredClip": "featurestore.store",
    "StoreWriter": "featurestore.store",
    "SCHEMA": "featurestore.store",
    "schema": "featurestore.store",
    "extract": "featurestore.extraction",
    "ExtractSummary": "featurestore.extraction",
    "ExtractOptions": "featurestore.options",
    "FeatureChoice": "featurestore.options",
    "ComputeSettings": "featurestore.options",
    "WritePolicy": "featurestore.options",
    "RunHooks": "featurestore.options",
    "DEFAULT_MODEL": "featurestore.options",
    "store_info": "featurestore.report",
    "verify_store": "featurestore.report",
    "repair_store": "featurestore.report",
    "export_hdf5": "featurestore.hdf5",
    "load_backbone": "featurestore.backbone",
    "identify_backbone": "featurestore.backbone",
    "write_random_backbone": "featurestore.random_backbone",
    "StoreError": "featurestore.errors",
    "StoreDamage": "featurestore.errors",
    "StoreLocked": "featurestore.errors",
    "BackboneError": "featurestore.errors",
    "DeviceError": "featurestore.errors",
    "ClusterLost": "featurestore.errors",
    "LayerError": "featurestore.errors",
    "ArgumentError": "featurestore.errors",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
