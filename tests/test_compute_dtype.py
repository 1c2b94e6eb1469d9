"""The backbone's compute dtype and attention: bfloat16 against the float32 reference,
the dtype kept apart by the fingerprint and said at start, SDPA against eager, and the
padding batches cost."""

import numpy as np
import pytest

from featurestore.audio import normalise
from featurestore.backbone import load_backbone
from featurestore.cpu_dtype import bfloat16_from_cpuinfo, dtype_reason
from featurestore.encode import encode_clips, plan_batches, plan_segments
from featurestore.store import FeatureStore
from tests.conftest import run_cli
from tests.synth import voiced

X86_FLAGS = "flags\t\t: fpu vme de pse tsc msr avx2 avx512f avx512bw"
ARM = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (X86_FLAGS, None),  # AVX-512 without BF16
        (X86_FLAGS + " avx512_bf16", "AVX-512 BF16"),
        (X86_FLAGS + " avx512_bf16 amx_bf16 amx_tile", "AMX"),
        (ARM, None),
        (ARM + " bf16 i8mm", "Arm BF16"),
        ("processor\t: 0\nmodel name\t: AMD EPYC\n" + X86_FLAGS + " sse4a", None),
    ],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert bfloat16_from_cpuinfo(cpuinfo) == native


def test_the_dtype_line_says_where_the_choice_came_from(monkeypatch):
    import featurestore.cpu_dtype as cpu_dtype

    monkeypatch.setattr(cpu_dtype, "native_bfloat16", lambda: None)
    monkeypatch.setattr(cpu_dtype, "_ADVISED", set())  # as in a new process
    slow = dtype_reason("bfloat16", "cpu", why="--dtype")
    assert "--dtype" in slow and "slower than float32" in slow
    assert slow == dtype_reason("bfloat16", "cpu", why="--dtype")  # a warning: every time
    assert "no native bfloat16" in dtype_reason("float32", "cpu", why="the default")
    # the advice once per process: a service's later jobs say the dtype alone
    assert (
        dtype_reason("float32", "cpu", why="the default") == "compute dtype float32 (the default)"
    )
    monkeypatch.setattr(cpu_dtype, "native_bfloat16", lambda: "AMX")
    assert "natively: AMX" in dtype_reason("bfloat16", "cpu", why="the feature set's")
    assert "--dtype bfloat16 may be faster" in dtype_reason("float32", "cpu", why="the default")
    assert "may be faster" not in dtype_reason("float32", "cpu", why="the default")
    on_gpu = dtype_reason("float16", "cuda", why="--dtype")
    assert on_gpu == "compute dtype float16 (--dtype, on cuda)"


def test_a_store_keeps_its_compute_dtype_and_never_mixes_two(mixed_corpus, tiny_backbone, tmp_path):
    store = tmp_path / "s.zarr"
    first = sorted(p for p in mixed_corpus.rglob("*.wav"))[:2]
    folder = tmp_path / "two"
    folder.mkdir()
    for p in first:
        (folder / p.name).write_bytes(p.read_bytes())
    run_cli("extract", folder, store, "--model", tiny_backbone, "--dtype", "bfloat16", "--quiet")
    # re-run without --dtype on more clips: the set's bfloat16, said so, one set
    (folder / "more.wav").write_bytes(sorted(mixed_corpus.rglob("*.flac"))[0].read_bytes())
    again = run_cli("extract", folder, store, "--model", tiny_backbone)
    assert "compute dtype bfloat16 (the feature set's" in again.stderr
    opened = FeatureStore.open(store)
    assert opened.spec["compute_dtype"] == "bfloat16" and len(opened.clip_ids) == 3
    # float32 asked for: another fingerprint, refused for this set (naming the field),
    # stored only as a feature set of its own
    refused = run_cli(
        "extract", folder, store, "--model", tiny_backbone, "--dtype", "float32", expect=2
    )
    assert "compute_dtype: 'bfloat16' vs 'float32'" in refused.output
    run_cli(
        "extract", folder, store, "--model", tiny_backbone, "--dtype", "float32",
        "--feature-set", "tiny-fp32", "--quiet",
    )  # fmt: skip
    sets = FeatureStore.open(store).feature_sets
    assert len(sets) == 2, sets


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_sdpa_attention_equals_eager_on_padded_batches(norm, tiny_backbone, tiny_group_backbone):
    folder = tiny_backbone if norm == "layer" else tiny_group_backbone
    fused = load_backbone(str(folder)).model
    plain = load_backbone(str(folder), attention="eager").model
    assert (fused.attention, plain.attention) == ("sdpa", "eager")
    assert fused.speech_model.config._attn_implementation == "sdpa"
    audio = [normalise(voiced(s, seed=i)) for i, s in enumerate((0.7, 1.3, 2.0, 1.3))]
    a = encode_clips(fused, audio, batch_seconds=8.0, window_seconds=None)
    b = encode_clips(plain, audio, batch_seconds=8.0, window_seconds=None)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(
            x.hidden.astype(np.float32), y.hidden.astype(np.float32), rtol=2**-10, atol=1e-4
        )
        np.testing.assert_allclose(x.clip_vad, y.clip_vad, atol=1e-4)


def test_families_without_sdpa_run_eager(tmp_path):
    from featurestore.random_backbone import write_random_backbone

    wavlm = write_random_backbone(tmp_path / "w", size="tiny", seed=0, family="wavlm")
    assert load_backbone(str(wavlm)).model.attention == "eager"
    with pytest.raises(Exception, match="no sdpa"):
        load_backbone(str(wavlm), attention="sdpa")


def test_length_sorted_batches_pad_under_a_tenth_of_the_frames():
    """Clip lengths drawn like the EMI data (median about 6 s, 1 to 15 s), batched as a
    GPU worker does (120 s of padded audio): padding is under 10% of the frames run."""
    rng = np.random.default_rng(0)
    seconds = np.clip(rng.lognormal(np.log(6.0), 0.5, size=400), 1.0, 15.0)
    segments = [
        seg
        for i, n in enumerate(seconds)
        for seg in plan_segments(i, int(n * 16_000), window_seconds=30)
    ]
    batches = plan_batches(segments, batch_seconds=120, allow_padding=True)
    real = sum(s.frames for s in segments)
    run = sum(len(b) * max(s.frames for s in b) for b in batches)
    assert max(len(b) for b in batches) > 4  # they did batch
    assert 1 - real / run < 0.10


def test_the_summary_counts_the_padding_the_backbone_ran(mixed_corpus, tiny_backbone, tmp_path):
    from featurestore.extraction import ExtractOptions, extract
    from manifests import build_manifest

    records = build_manifest(mixed_corpus)
    options = ExtractOptions.of(model=str(tiny_backbone), quiet=True)
    one = extract(records, str(tmp_path / "a.zarr"), options)
    assert one.frames_computed == one.frames  # one clip per forward: no padding
    batched = extract(
        records,
        str(tmp_path / "b.zarr"),
        ExtractOptions.of(model=str(tiny_backbone), batch_seconds=8.0, quiet=True),
    )
    assert batched.frames == one.frames and batched.frames_computed > batched.frames
