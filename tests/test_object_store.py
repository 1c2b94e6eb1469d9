"""Stores in object storage: a real S3-compatible server (moto) on loopback."""

import csv
import io
import json

import numpy as np
import pytest
import zarr

from featurestore.store import FeatureStore, open_zarr_store
from manifests.synthetic import write_corpus
from service.client import ServiceError
from tests.conftest import run_cli
from tests.reference import assert_same_features
from tests.s3 import s3_server as s3_server_on_loopback

BUCKET = "emi-features"


@pytest.fixture(scope="module")
def s3_server():
    with s3_server_on_loopback(BUCKET) as url:
        yield url


@pytest.mark.slow
def test_extract_resume_info_verify_on_s3(s3_server, layer_store, mixed_corpus, tiny_backbone):
    url = f"{s3_server}/feats.zarr"
    first = json.loads(
        run_cli(
            "extract",
            mixed_corpus,
            url,
            "--model",
            tiny_backbone,
            "--part-seconds",
            "2",
            "--json",
            "--quiet",
        ).output
    )
    remote, local = FeatureStore.open(url), FeatureStore.open(layer_store)
    assert first["extracted"] == len(local.clip_ids)
    assert_same_features(remote, local)
    # A crash after a worker wrote a part, before the driver committed it: the part
    # is not in the index; readers never see it and the next run deletes it.
    name = remote.complete_parts[0]
    stray = "p000099-deadbeef"
    source = zarr.open_group(open_zarr_store(f"{url}/parts/{name}", mode="r"), mode="r")
    copy = zarr.open_group(open_zarr_store(f"{url}/parts/{stray}", mode="a"), mode="w")
    copy.attrs.update(source.attrs.asdict())
    assert FeatureStore.open(url).clip_ids == remote.clip_ids
    second = json.loads(run_cli("extract", mixed_corpus, url, "--json", "--quiet").output)
    assert second["incomplete_removed"] == [stray] and second["extracted"] == 0
    info = json.loads(run_cli("store", "info", url, "--json").output)
    assert info["clips"] == len(local.clip_ids) and info["size_bytes"] > 0
    assert run_cli("store", "verify", url).exit_code == 0


@pytest.mark.slow
def test_train_predict_score_on_s3(s3_server, tiny_backbone, tmp_path):
    splits = write_corpus(tmp_path / "corpus", clips=24, seed=4, min_seconds=1.0, max_seconds=2.0)
    url = f"{s3_server}/scored.zarr"
    audio = tmp_path / "corpus" / "audio"
    run_cli("extract", audio, url, "--model", tiny_backbone, "--quiet")
    run_cli(
        "train",
        url,
        "--labels",
        splits["train"],
        "--val-labels",
        splits["valid"],
        "--out",
        tmp_path / "head",
        "--preset",
        "compact",
        "--epochs",
        "2",
        "--quiet",
    )
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["store"]["location"] == url
    run_cli("predict", url, "--head", tmp_path / "head", "-o", tmp_path / "p.csv")
    predicted = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(predicted) == 24
    scored = run_cli(
        "score",
        audio,
        "--head",
        tmp_path / "head",
        "--store",
        url,
        "-o",
        tmp_path / "s.csv",
        "--quiet",
    )
    assert "0 extracted, 24 reused" in scored.output
    by_id = {r["clip_id"]: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert all(by_id[r["clip_id"]] == r for r in predicted)


def test_audio_in_a_bucket(s3_server, layer_store, mixed_corpus, tiny_backbone):
    """The lab's case: recordings land in a bucket; a corrupt upload is listed, not fatal."""
    import boto3

    s3 = boto3.client("s3")
    for path in sorted(p for p in mixed_corpus.rglob("*") if p.is_file()):
        key = f"uploads/{path.relative_to(mixed_corpus).as_posix()}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="uploads/corrupt.wav", Body=b"RIFF\x00\x01WAVEnot audio")
    url = f"{s3_server}/from-bucket.zarr"
    result = run_cli(
        "extract",
        f"{s3_server}/uploads",
        url,
        "--model",
        tiny_backbone,
        "--quiet",
        "--json",
        expect=3,
    )
    summary = json.loads(result.stdout)
    assert [f["clip_id"] for f in summary["failed"]] == ["corrupt"]
    remote, local = FeatureStore.open(url), FeatureStore.open(layer_store)
    assert_same_features(remote, local)
    for clip_id in local.clip_ids:
        assert remote.clip_info(clip_id)["source_path"].startswith(f"{s3_server}/uploads/")
        assert remote.clip_info(clip_id)["sha256"] == local.clip_info(clip_id)["sha256"]


def test_a_prefix_holding_other_objects_is_refused_untouched(
    s3_server, mixed_corpus, tiny_backbone
):
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="theirs/report.pdf", Body=b"precious")
    s3.put_object(Bucket=BUCKET, Key="theirs/data/table.csv", Body=b"a,b")
    url = f"{s3_server}/theirs"
    result = run_cli("extract", mixed_corpus, url, "--model", tiny_backbone, "--quiet", expect=2)
    assert "not an emi feature store" in result.output
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="theirs/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["theirs/data/table.csv", "theirs/report.pdf"]
    assert s3.get_object(Bucket=BUCKET, Key="theirs/report.pdf")["Body"].read() == b"precious"


@pytest.mark.slow
def test_damaged_remote_part_is_refused_and_repaired(s3_server, layer_store, mixed_corpus):
    import boto3

    url = f"{s3_server}/damaged.zarr"
    run_cli(
        "extract",
        mixed_corpus,
        url,
        "--part-seconds",
        "2",
        "--model",
        FeatureStore.open(layer_store).spec["backbone"]["ref"],
        "--quiet",
    )
    part = FeatureStore.open(url).complete_parts[0]
    s3 = boto3.client("s3")
    keys = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"damaged.zarr/parts/{part}/frame_vad/c/")
    s3.delete_object(Bucket=BUCKET, Key=keys["Contents"][0]["Key"])
    verify = run_cli("store", "verify", url, expect=1)
    assert f"part {part}: array frame_vad" in verify.output
    run_cli("store", "repair", url)
    run_cli("extract", mixed_corpus, url, "--quiet")
    assert_same_features(FeatureStore.open(url), FeatureStore.open(layer_store))


@pytest.mark.slow
def test_two_drivers_at_once_on_object_storage(s3_server, tiny_backbone, tmp_path):
    from tests.test_lock import two_drivers_at_once

    two_drivers_at_once(tmp_path, f"{s3_server}/shared.zarr", tiny_backbone)


def test_video_containers_in_a_bucket(s3_server, tiny_backbone, tmp_path):
    """Containers are read from object storage too; a silent video fails as a clip."""
    import boto3
    import numpy as np

    from tests.media import mux_audio, write_video_without_audio
    from tests.test_containers import RATE, _pcm

    local = tmp_path / "videos"
    local.mkdir()
    mux_audio(local / "talk.mkv", _pcm(RATE), RATE, "flac", video=True)
    write_video_without_audio(local / "silent.mp4")
    s3 = boto3.client("s3")
    for path in local.iterdir():
        s3.put_object(Bucket=BUCKET, Key=f"videos/{path.name}", Body=path.read_bytes())
    url = f"{s3_server}/videos.zarr"
    args = ("--model", tiny_backbone, "--quiet", "--json")
    summary = json.loads(run_cli("extract", f"{s3_server}/videos", url, *args, expect=3).stdout)
    assert [f["clip_id"] for f in summary["failed"]] == ["silent"]
    assert "no audio stream" in summary["failed"][0]["reason"]
    run_cli("extract", local, tmp_path / "local.zarr", *args, expect=3)
    remote, here = FeatureStore.open(url), FeatureStore.open(tmp_path / "local.zarr")
    np.testing.assert_array_equal(remote.hidden("talk"), here.hidden("talk"))


@pytest.mark.slow
def test_the_service_on_object_storage_and_a_dask_cluster(s3_server, tiny_backbone, tmp_path):
    """emi serve with --stores and --source-root in a bucket and --scheduler: a score job
    reads audio from the bucket and keeps its features there, computed by the cluster's
    workers; a prefix not below the root is refused."""
    import boto3

    from tests.cluster import dask_cluster
    from tests.served import Hosted

    splits = write_corpus(tmp_path / "corpus", clips=8, seed=21, min_seconds=1.0, max_seconds=2.0)
    audio = tmp_path / "corpus" / "audio"
    run_cli("extract", audio, tmp_path / "local.zarr", "--model", tiny_backbone, "--quiet")
    heads = tmp_path / "served" / "heads"
    run_cli(
        "train", tmp_path / "local.zarr", "--labels", splits["train"], "--val-labels",
        splits["valid"], "--out", heads / "ml", "--preset", "mean-linear", "--quiet",
    )  # fmt: skip
    s3 = boto3.client("s3")
    for path in sorted(audio.glob("*.wav")):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/{path.name}", Body=path.read_bytes())
    run_cli(
        "predict", tmp_path / "local.zarr", "--head", heads / "ml", "-o", tmp_path / "local.csv"
    )
    with dask_cluster(tmp_path / "dask", [{}]) as (address, _), Hosted(
        tmp_path / "served", [f"{s3_server}/incoming"], "--scheduler", address,
        stores=f"{s3_server}/service-stores",
    ) as served:  # fmt: skip
        served.start()
        try:
            client = served.client()
            with pytest.raises(ServiceError) as outside:
                client.submit({"kind": "score", "source": f"{s3_server}/other", "heads": ["ml"]})
            assert outside.value.status == 403
            job = client.submit(
                {"kind": "score", "source": f"{s3_server}/incoming", "heads": ["ml"]}
            )
            done = client.wait(job["id"], poll_s=0.2, timeout_s=180)
            assert done["state"] == "succeeded", (done, served.text())
            assert done["result"]["extracted"] == 8
            [store] = client.stores()
            assert store["kind"] == "score" and store["clips"] == 8
            got = list(csv.reader(io.StringIO(client.predictions_csv(job["id"]))))
        finally:
            assert served.stop() == 0
    want = list(csv.reader(io.StringIO((tmp_path / "local.csv").read_bytes().decode())))
    assert [r[0] for r in got] == [r[0] for r in want]
    assert np.allclose([[float(v) for v in r[1:]] for r in got[1:]],
                       [[float(v) for v in r[1:]] for r in want[1:]], atol=2e-5)  # fmt: skip
