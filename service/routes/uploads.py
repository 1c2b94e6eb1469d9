"""``/v1/uploads``: audio, video and label files (or one zip/tar archive) sent to the
service, named by id as a job's source or labels."""

from __future__ import annotations

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response

from service.api_docs import READS, WRITES, errors
from service.auth import bearer
from service.runtime import Served
from service.views import UploadView

router = APIRouter(tags=["uploads"], dependencies=[Security(bearer)])

MULTIPART_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "title": "UploadFiles",
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "audio or video files, label CSVs, or one archive",
                    }
                },
                "required": ["files"],
            }
        }
    },
}


@router.post(
    "/v1/uploads",
    status_code=201,
    response_model=UploadView,
    openapi_extra={"requestBody": MULTIPART_BODY},
    responses=errors(*WRITES, 415),
)
async def upload_files(service: Served, request: Request):
    """Upload audio or video files, label CSVs, or one zip/tar archive
    (multipart/form-data); name the upload's id as a job's source or labels."""
    from service.uploads import receive_upload

    length = request.headers.get("content-length")
    return await receive_upload(
        service.config,
        request.headers.get("content-type", ""),
        int(length) if length and length.isdigit() else None,
        request.stream(),
    )


@router.get("/v1/uploads/{upload_id}", response_model=UploadView, responses=errors(*READS, 404))
def get_upload(service: Served, upload_id: str):
    """An upload: its files (the first names), bytes, and the files it left out."""
    from service.uploads import describe_upload

    return describe_upload(service.config, upload_id)


@router.delete("/v1/uploads/{upload_id}", status_code=204, responses=errors(*WRITES, 404))
def delete_upload(service: Served, upload_id: str):
    """Remove an upload's files."""
    from service.uploads import delete_upload as remove

    remove(service.config, upload_id)
    return Response(status_code=204)
