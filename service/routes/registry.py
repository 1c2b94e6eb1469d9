"""The named things a client may use: the service's limits and source roots, the
folders below the roots, the managed stores and the registry's heads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Security

from service.api_docs import READS, bearer, errors
from service.runtime import Service, service_of

router = APIRouter(tags=["registry"], dependencies=[Security(bearer)])
Served = Annotated[Service, Depends(service_of)]


@router.get("/v1/service", responses=errors(*READS))
def service_info(service: Served) -> dict:
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


@router.get("/v1/sources", responses=errors(*READS, 403, 404, 422))
def list_sources(
    service: Served, path: Annotated[str | None, Query(max_length=4096)] = None
) -> dict:
    """The folders below the source roots: no ``path``, the roots; else the folders in
    ``path`` and its count of audio files (never anything outside the roots)."""
    from service.sources import list_folder

    return list_folder(service.config, path)


@router.get("/v1/stores", responses=errors(*READS))
def list_stores(service: Served) -> dict:
    """The managed stores: name, feature sets, clips, hours, size."""
    from service.registry import list_stores as listed

    return {"stores": listed(service.config)}


@router.get("/v1/heads", responses=errors(*READS))
def list_heads(service: Served) -> dict:
    """The head registry, best validation mean Pearson first."""
    from service.registry import list_heads as listed

    return {"heads": listed(service.config)}
