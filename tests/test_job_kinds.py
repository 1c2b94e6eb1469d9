"""Job kinds as records and the one state machine: a toy kind added in a few lines,
every move a compare-and-set, a finished job's cancel refused (409), the request read
back into its model, and the request rules the store's own (a feature set named with a
``.``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Literal

import pytest
from pydantic import BaseModel

from service.jobs import CANCELABLE_STATES, FINISHED_STATES, TRANSITIONS, JobState, JobTable
from service.kinds import KINDS, JobKind, JobRequestBase
from tests.served import InProcess


class EchoRequest(JobRequestBase):
    kind: Literal["echo"]
    text: str


class EchoProgress(BaseModel):
    stage: str = "queued"


class EchoResult(BaseModel):
    shout: str


def _echo(context) -> EchoResult:
    context.progress(stage="shouting")
    return EchoResult(shout=context.request.text.upper())


ECHO = JobKind("echo", EchoRequest, EchoProgress, EchoResult, run=_echo)


def _wait(client, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := client.job(job_id))["state"] not in {s.value for s in FINISHED_STATES}:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_a_toy_kind_is_one_record_and_runs_typed_end_to_end(tmp_path):
    with InProcess(tmp_path, [tmp_path], kinds=KINDS.with_kind(ECHO)) as served:
        client = served.client()
        job = client.submit({"kind": "echo", "text": "hello"})
        assert job["request"]["text"] == "hello" and job["progress"] == {"stage": "queued"}
        done = _wait(client, job["id"])
        assert done["state"] == "succeeded" and done["result"] == {"shout": "HELLO"}
        assert done["progress"]["stage"] == "succeeded"
        schemas = served.web.get("/openapi.json").json()["components"]["schemas"]
        assert {"EchoRequest", "EchoJob", "EchoResult", "EchoJobEnded"} <= set(schemas)
        with pytest.raises(Exception, match="422"):  # its body is checked by its model
            client.submit({"kind": "echo", "text": 3, "extra": 1})
        # read back from the table into the kind's models
        stored = served.service.table.get(job["id"])
        assert isinstance(stored.request, EchoRequest) and isinstance(stored.result, EchoResult)


def test_the_transition_table_is_the_only_way_and_each_move_is_compare_and_set(tmp_path):
    from service.jobs import StateConflict

    table = JobTable(tmp_path / "jobs.sqlite", KINDS)
    request = {"kind": "score", "source": "/x", "heads": ["h"]}
    job, _ = table.add("score", request)
    assert job.state is JobState.queued and job.request.heads == ["h"]
    for state in JobState:  # no move out of a finished state; none a table lacks
        for to in JobState:
            if to not in TRANSITIONS[state]:
                with pytest.raises(StateConflict):
                    table.transition(job.id, to, expect=[state])
    assert CANCELABLE_STATES.isdisjoint(FINISHED_STATES)
    claimed = table.claim_next()
    assert claimed.state is JobState.running and claimed.runs == 1
    assert table.claim_next() is None
    # a cancel and the run's end race: exactly one wins, the other learns it lost
    outcomes = []
    barrier = threading.Barrier(2)

    def move(to):
        barrier.wait()
        outcomes.append((to, table.transition(job.id, to, expect=[JobState.running])))

    racers = [threading.Thread(target=move, args=(to,)) for to in
              (JobState.succeeded, JobState.cancelling)]  # fmt: skip
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(won for _, won in outcomes) == [False, True]
    winner = next(to for to, won in outcomes if won)
    assert table.get(job.id).state is winner
    table.close()


def test_cancel_moves_a_queued_job_to_cancelled_a_running_one_to_cancelling(tmp_path):
    table = JobTable(tmp_path / "jobs.sqlite", KINDS)
    queued, _ = table.add("extract", {"kind": "extract", "source": "/x", "store": "s"})
    job, moved = table.request_cancel(queued.id)
    assert moved is JobState.cancelled and job.state is JobState.cancelled and job.final
    assert job.progress.stage == "cancelled" and job.finished_at is not None
    assert table.request_cancel(queued.id) == (table.get(queued.id), None)  # finished: none
    running, _ = table.add("extract", {"kind": "extract", "source": "/y", "store": "s"})
    table.claim_next()
    job, moved = table.request_cancel(running.id)
    assert moved is JobState.cancelling and job.cancel_requested
    assert table.request_cancel(running.id)[1] is None  # asked again: as it is
    # the service killed while cancelling: it ends cancelled at the next start
    assert table.cancelled_while_away() == [running.id]
    assert table.get(running.id).state is JobState.cancelled
    table.close()


def test_a_score_job_cancelled_after_it_ran_is_finished_by_a_run(tmp_path):
    """A score run keeps what it finished: cancelled while its service was away, it
    is queued again and taken as ``cancelling`` (to end with its partial predictions)."""
    table = JobTable(tmp_path / "jobs.sqlite", KINDS)
    job, _ = table.add("score", {"kind": "score", "source": "/x", "heads": ["h"]})
    table.claim_next()
    table.request_cancel(job.id)
    assert table.cancelled_while_away() == []
    assert table.requeue_running() == [job.id]
    again = table.claim_next()
    assert again.id == job.id and again.state is JobState.cancelling and again.runs == 2
    table.close()


def test_a_stored_request_that_is_not_its_kinds_model_is_damaged(tmp_path):
    table = JobTable(tmp_path / "jobs.sqlite", KINDS)
    job, _ = table.add("score", {"kind": "score", "source": "/x", "heads": ["h"]})
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET request=? WHERE id=?", ('{"kind": "score"}', job.id))
    read = table.get(job.id)
    assert read.request is None and read.damaged == ["request"]
    assert table.claim_next() is None  # it fails saying so, never runs
    failed = table.get(job.id)
    assert failed.state is JobState.failed and "damaged" in failed.error["detail"]
    table.close()


def test_cancelling_a_finished_job_is_refused_and_dotted_set_names_are_taken(
    tmp_path, tiny_backbone
):
    from featurestore.store.layout import check_set_name, set_name_of
    from tests.synth import write_clip

    source = tmp_path / "audio"
    write_clip(source / "a.wav", 0.5, seed=0)
    dotted = set_name_of({"backbone": {"ref": "/models/w2v2.v1+vad"}, "hidden_size": 4,
                         "max_seconds": None, "window_seconds": None})  # fmt: skip
    assert "." in check_set_name(dotted)
    with InProcess(tmp_path, [source], model=str(tiny_backbone)) as served:
        client = served.client()
        job = client.submit({"kind": "extract", "source": str(source), "store": "named",
                             "feature_set": dotted})  # fmt: skip
        assert job["request"]["feature_set"] == dotted
        done = _wait(client, job["id"])
        assert done["state"] == "succeeded", done
        assert done["result"]["feature_set"] == dotted and done["result"]["extracted"] == 1
        answer = served.web.post(f"/v1/jobs/{job['id']}/cancel")
        assert answer.status_code == 409 and "only a job not finished" in answer.json()["detail"]
        named = {"kind": "extract", "source": str(source), "store": "named"}
        bad = served.web.post("/v1/jobs", json={**named, "feature_set": "x.json"})
        assert bad.status_code == 422 and "feature_set" in str(bad.json()["detail"])


def test_a_library_error_names_the_setting_the_cli_its_flag_the_api_its_field(
    tmp_path, tiny_backbone
):
    from featurestore.errors import LayerError, as_flag
    from featurestore.spec import parse_layers
    from tests.conftest import run_cli
    from tests.synth import write_clip

    with pytest.raises(LayerError) as raised:
        parse_layers("0,7", last=2)
    assert str(raised.value).startswith("layers: layer 7 does not exist")
    assert as_flag(raised.value).startswith("--layers: layer 7 does not exist")
    source = tmp_path / "audio"
    write_clip(source / "a.wav", 0.5, seed=1)
    said = run_cli("extract", source, tmp_path / "cli.zarr", "--model", tiny_backbone,
                   "--layers", "0,7", "--quiet", expect=2).output  # fmt: skip
    assert "Error: --layers: layer 7 does not exist" in said
    with InProcess(tmp_path / "served", [source], model=str(tiny_backbone)) as served:
        client = served.client()
        job = client.submit({"kind": "extract", "source": str(source), "store": "layered",
                             "layers": "0,7"})  # fmt: skip
        failed = _wait(client, job["id"])
        assert failed["state"] == "failed", failed
        assert failed["error"]["detail"].startswith("layers: layer 7 does not exist")
        assert "--" not in failed["error"]["detail"]


def test_extract_then_train_jobs_report_typed_progress_in_process(tmp_path, tiny_backbone):
    """The train kind's progress (the learning curve, epochs, the best so far) and
    result are its models all through, read back from the table."""
    from manifests.synthetic import write_corpus

    root = tmp_path / "root"
    splits = write_corpus(root, clips=10, seed=3, min_seconds=0.6, max_seconds=1.0)
    with InProcess(tmp_path / "served", [root], model=str(tiny_backbone)) as served:
        client = served.client()
        extracted = _wait(
            client,
            client.submit({"kind": "extract", "source": str(root / "audio"), "store": "lab"})["id"],
        )
        assert extracted["state"] == "succeeded" and extracted["result"]["extracted"] == 10
        job = client.submit({"kind": "train", "store": "lab", "labels": str(splits["train"]),
                             "val_labels": str(splits["valid"]), "name": "ridge",
                             "preset": "mean-linear"})  # fmt: skip
        done = _wait(client, job["id"])
        assert done["state"] == "succeeded", done
        progress, result = done["progress"], done["result"]
        assert progress["stage"] == "succeeded" and progress["epochs_done"] == 1
        assert [p["head"] for p in progress["curve"]] == ["ridge"]
        assert result["heads"] == ["ridge"] and result["best"]["head"] == "ridge"
        assert result["best"]["val_pearson_mean"] == progress["best_val_pearson"]
        stored = served.service.table.get(job["id"])
        assert type(stored.progress).__name__ == "TrainProgress"
        assert type(stored.result).__name__ == "TrainResult"
        assert [h["name"] for h in client.heads()] == ["ridge"]


def test_the_openapi_document_types_times_progress_and_every_listing(tmp_path):
    """Every time is a date-time, each kind's job has its own progress and result
    models, and the listings have response models: a generated client reads types."""
    import json

    from service.app import create_app
    from service.config import ServiceConfig
    from service.state import StateFolder

    (tmp_path / "root").mkdir()
    roots = [str(tmp_path / "root")]
    config = ServiceConfig(
        stores=str(tmp_path / "s"), heads=tmp_path / "h", state=tmp_path / "st", source_roots=roots
    )
    state = StateFolder.open(config.state)
    document = create_app(config, state).app.app.openapi()
    schemas = document["components"]["schemas"]
    times = {
        (name, field): json.dumps(spec)
        for name, schema in schemas.items()
        for field, spec in schema.get("properties", {}).items()
        if field.endswith("_at")
    }
    assert ("ScoreJob", "created_at") in times and ("UploadView", "created_at") in times
    assert all('"format": "date-time"' in spec for spec in times.values()), times
    for kind, progress, result in (("Score", "ClipProgress", "ScoreResult"),
                                   ("Extract", "ClipProgress", "ExtractResult"),
                                   ("Train", "TrainProgress", "TrainResult")):  # fmt: skip
        job = schemas[f"{kind}Job"]["properties"]
        assert job["progress"]["$ref"].endswith(f"/{progress}")
        assert result in json.dumps(job["result"]) and f"{kind}JobRequest" in json.dumps(job)
    listings = {"/v1/heads": "HeadList", "/v1/stores": "StoreList",
                "/v1/service": "ServiceInfo", "/v1/sources": "SourceListing"}  # fmt: skip
    for path, model in listings.items():
        answer = document["paths"][path]["get"]["responses"]["200"]
        assert answer["content"]["application/json"]["schema"]["$ref"].endswith(f"/{model}")
    cancel = document["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    assert "409" in cancel
    callbacks = document["paths"]["/v1/jobs"]["post"]["callbacks"]
    assert "ScoreJobEnded" in json.dumps(callbacks) and "TrainJobEnded" in json.dumps(callbacks)
