"""The named things a client may use: the service's limits and source roots, the
folders below the roots, the managed stores and the registry's heads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Security

from service.api_docs import READS, errors
from service.auth import bearer
from service.runtime import Served
from service.views import HeadList, ServiceInfo, SourceListing, StoreList

router = APIRouter(tags=["registry"], dependencies=[Security(bearer)])


@router.get("/v1/service", response_model=ServiceInfo, responses=errors(*READS))
def service_info(service: Served):
    """The upload limits, how long uploads and results are kept, and the source roots
    (what a client may send)."""
    from service.uploads import UploadLedger

    config = service.config
    return {
        "limits": {
            "max_file_bytes": config.max_file_bytes,
            "max_request_bytes": config.max_request_bytes,
            "max_files": config.max_files,
            "max_body_bytes": config.max_body_bytes,
            "max_archive_ratio": config.max_archive_ratio,
            "upload_quota_bytes": config.upload_quota_bytes,
            "uploads_kept_bytes": UploadLedger.of(config).kept(),
        },
        "keep_days": config.keep_days,
        "source_roots": config.source_roots,
        "callbacks": config.callback_secret is not None,
    }


@router.get("/v1/sources", response_model=SourceListing, responses=errors(*READS, 403, 404, 422))
def list_sources(service: Served, path: Annotated[str | None, Query(max_length=4096)] = None):
    """The folders below the source roots: no ``path``, the roots; else the folders in
    ``path`` and its count of audio files (never anything outside the roots)."""
    from service.sources import list_folder

    return list_folder(service.config, path)


@router.get("/v1/stores", response_model=StoreList, responses=errors(*READS))
def list_stores(service: Served):
    """The managed stores: name, feature sets, clips, hours, size."""
    from service.registry import list_stores as listed

    return {"stores": listed(service.config)}


@router.get("/v1/heads", response_model=HeadList, responses=errors(*READS))
def list_heads(service: Served):
    """The head registry, best validation mean Pearson first, and the recommended head
    where their validation scores compare (the same validation clips and labels)."""
    from service.registry import list_heads as listed

    return listed(service.config)
