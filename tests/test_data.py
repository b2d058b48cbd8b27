"""Tests of vft.data: records, shard writer, grain pipeline, synthetic videos, video IO, prep."""
import json
import logging
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python import array_record_module
from jax.sharding import NamedSharding, PartitionSpec as P

from vft.data import pipeline, prep, records, synthetic, video_io, writer
from vft.eval import report
from vft.models.vae import PatchCodec

DESK = Path(prep.__file__).parent / "demo_clips" / "vidtok_desk.mp4"
LATENT_SHAPE = (2, 2, 2, 4)


def _example(i: int) -> dict:
  return {"latents": np.full(LATENT_SHAPE, i, ml_dtypes.bfloat16), "label": i,
          "video_id": f"v/{i}"}


@pytest.fixture
def data_dir(tmp_path):
  """24 records in 5 shards (5, 5, 5, 5, 4); record i has label i and latents == i."""
  with writer.ShardWriter(tmp_path, "train", records_per_shard=5, meta={"k": "v"}) as w:
    for i in range(24):
      w.write(_example(i))
  return tmp_path


def _labels(ds, num_batches=None):
  out = []
  for i, batch in enumerate(ds):
    if num_batches is not None and i == num_batches:
      break
    out.append(batch["label"].tolist())
  return out


# ---------------------------------------------------------------- records


def test_record_round_trip_all_fields():
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(5, 4, 4, 8)).astype(ml_dtypes.bfloat16)
  latents[0, 0, 0, :3] = [np.inf, -0.0, 1e-40]  # odd values must survive bit-exactly
  example = {
      "latents": latents, "label": 7, "caption": "a ca\u00eft \u2014 ok", "video_id": "asl/clip1",
      "repa": rng.normal(size=(5, 2, 2, 6)).astype(np.float32),
      "video": rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8),
  }
  out = records.decode_record(records.encode_record(example))
  assert set(out) == set(example)
  assert out["latents"].dtype == ml_dtypes.bfloat16 and out["latents"].shape == latents.shape
  np.testing.assert_array_equal(out["latents"].view(np.uint16), latents.view(np.uint16))
  np.testing.assert_array_equal(out["repa"], example["repa"])
  np.testing.assert_array_equal(out["video"], example["video"])
  assert out["label"] == 7 and out["caption"] == example["caption"]
  assert out["video_id"] == "asl/clip1"


def test_record_round_trip_latents_only_float16():
  latents = np.arange(2 * 3 * 3 * 2, dtype=np.float16).reshape(2, 3, 3, 2)
  out = records.decode_record(records.encode_record({"latents": latents}))
  assert list(out) == ["latents"]
  assert out["latents"].dtype == np.float16
  np.testing.assert_array_equal(out["latents"], latents)


def _packed(**fields) -> bytes:
  return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize("data, expected", [
    (b"\xc1\x00garbage", "msgpack"),
    (records.encode_record(_example(1))[:-7], "msgpack"),
    (_packed(latents={"shape": [1, 1, 1, 2], "dtype": "complex512", "data": b"\0" * 4}),
     "complex512"),
    (_packed(latents={"shape": [1, 1, 1, 3], "dtype": "bfloat16", "data": b"\0" * 4}),
     "needs 6"),
    (_packed(label=3), "latents"),
    (_packed(latents={"shape": [2, 2], "dtype": "bfloat16", "data": b"\0" * 8}), "4 dims"),
    (_packed(latents={"shape": [1, 1, 1, 1], "dtype": "bfloat16", "data": b"\0\0"}, extra=1),
     "extra"),
    (msgpack.packb([1, 2, 3]), "map"),
])
def test_decode_record_rejects_malformed_bytes(data, expected):
  with pytest.raises(records.CorruptRecordError, match=expected) as e:
    records.decode_record(data, source="shard-7[3]")
  assert "shard-7[3]" in str(e.value)
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("example, field", [
    ({"label": 1}, "latents"),
    ({"latents": np.zeros((1, 1, 1, 1), np.float32)}, "latents"),
    ({"latents": np.zeros((1, 1, 1), ml_dtypes.bfloat16)}, "latents"),
    ({"latents": np.zeros((1, 1, 1, 1), ml_dtypes.bfloat16), "video": np.zeros((1, 2, 2, 4),
                                                                                np.uint8)},
     "video"),
    ({"latents": np.zeros((1, 1, 1, 1), ml_dtypes.bfloat16), "label": "3"}, "label"),
    ({"latents": np.zeros((1, 1, 1, 1), ml_dtypes.bfloat16), "caption": 3}, "caption"),
    ({"latents": np.zeros((1, 1, 1, 1), ml_dtypes.bfloat16), "colour": 3}, "colour"),
])
def test_validate_example_names_the_field(example, field):
  with pytest.raises(ValueError, match=field):
    records.validate_example(example)


# ---------------------------------------------------------------- writer


def test_writer_shards_and_manifest(data_dir):
  manifest = writer.read_manifest(data_dir)
  entry = manifest["splits"]["train"]
  assert manifest["version"] == 1
  assert [s["num_records"] for s in entry["shards"]] == [5, 5, 5, 5, 4]
  assert [s["file"] for s in entry["shards"]] == [f"train-{i:05d}.array_record" for i in range(5)]
  assert entry["num_records"] == 24 and entry["complete"] and entry["meta"] == {"k": "v"}
  assert entry["example_spec"]["latents"] == {"shape": list(LATENT_SHAPE), "dtype": "bfloat16"}
  assert entry["example_spec"]["label"] == {"dtype": "int64"}
  assert sorted(p.name for p in data_dir.iterdir()) == sorted(
      ["manifest.json"] + [s["file"] for s in entry["shards"]])  # no temp files left
  for shard in entry["shards"]:
    reader = array_record_module.ArrayRecordReader(str(data_dir / shard["file"]))
    assert reader.num_records() == shard["num_records"]
    reader.close()


def test_writer_interrupted_keeps_finished_shards(tmp_path):
  with pytest.raises(RuntimeError, match="boom"):
    with writer.ShardWriter(tmp_path, "train", records_per_shard=2) as w:
      for i in range(5):
        w.write(_example(i))
      raise RuntimeError("boom")
  entry = writer.read_manifest(tmp_path)["splits"]["train"]
  assert not entry["complete"]
  assert [s["num_records"] for s in entry["shards"]] == [2, 2]
  assert not list(tmp_path.glob(".*"))  # the unfinished shard was discarded
  ds = pipeline.make_dataset(tmp_path, "train", batch_size_per_process=1, seed=0, shuffle=False,
                             num_epochs=1, fields=("label",))
  assert sum(_labels(ds), []) == [0, 1, 2, 3]


def test_writer_rejects_mismatched_shapes(tmp_path):
  w = writer.ShardWriter(tmp_path, "train")
  w.write(_example(0))
  bad = {"latents": np.zeros((2, 2, 2, 5), ml_dtypes.bfloat16), "label": 1, "video_id": "x"}
  with pytest.raises(ValueError, match=r"\(2, 2, 2, 5\).*\(2, 2, 2, 4\)"):
    w.write(bad)
  with pytest.raises(ValueError, match="fields"):
    w.write({"latents": np.zeros(LATENT_SHAPE, ml_dtypes.bfloat16)})
  w.close()


def test_writer_rewriting_a_split_replaces_it(data_dir):
  with writer.ShardWriter(data_dir, "train", records_per_shard=5) as w:
    for i in range(3):
      w.write(_example(i))
  with writer.ShardWriter(data_dir, "eval") as w:
    w.write(_example(9))
  manifest = writer.read_manifest(data_dir)
  assert manifest["splits"]["train"]["num_records"] == 3
  assert manifest["splits"]["eval"]["num_records"] == 1
  assert sorted(p.name for p in data_dir.glob("*.array_record")) == [
      "eval-00000.array_record", "train-00000.array_record"]


def test_read_manifest_errors(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="prep"):
    writer.read_manifest(tmp_path / "nope")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="manifest.json not found.*prep"):
    writer.read_manifest(empty)
  (data_dir / "train-00002.array_record").unlink()
  with pytest.raises(FileNotFoundError, match="train-00002.array_record"):
    writer.read_manifest(data_dir)
  (data_dir / "manifest.json").write_text("{not json")
  with pytest.raises(ValueError, match="malformed manifest"):
    writer.read_manifest(data_dir)
  (data_dir / "manifest.json").write_text(json.dumps({"version": 1, "splits": {
      "train": {"shards": [], "num_records": 3}}}))
  with pytest.raises(ValueError, match="num_records"):
    writer.read_manifest(data_dir)


# ---------------------------------------------------------------- pipeline


def test_pipeline_batches_shapes_and_dtypes(data_dir):
  ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=4, seed=0)
  batch = next(iter(ds))
  assert list(batch) == ["latents"]
  assert batch["latents"].shape == (4,) + LATENT_SHAPE
  assert batch["latents"].dtype == ml_dtypes.bfloat16
  ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=4, seed=0, fields=None)
  batch = next(iter(ds))
  assert set(batch) == {"latents", "label", "video_id"}
  assert batch["label"].dtype == np.int64
  for lat, label, vid in zip(batch["latents"], batch["label"], batch["video_id"]):
    assert np.all(lat.astype(np.float32) == label) and vid == f"v/{label}"


def test_pipeline_seeded_order(data_dir):
  def first(seed):
    ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=4, seed=seed,
                               fields=("label",))
    return _labels(ds, 12)  # 2 epochs of 24
  a = first(0)
  assert a == first(0)
  assert a != first(1)
  epoch0, epoch1 = sum(a[:6], []), sum(a[6:], [])
  assert sorted(epoch0) == list(range(24)) and sorted(epoch1) == list(range(24))
  assert epoch0 != epoch1 and epoch0 != list(range(24))  # reshuffled each epoch


def test_pipeline_unshuffled_finite_epoch_in_order(data_dir):
  ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=5, seed=0, shuffle=False,
                             num_epochs=1, drop_remainder=False, fields=("label",))
  assert _labels(ds) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14],
                         [15, 16, 17, 18, 19], [20, 21, 22, 23]]


def test_pipeline_process_slices_disjoint_and_covering(data_dir):
  seen = []
  for index in range(2):
    ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=4, seed=3, num_epochs=1,
                               process_index=index, process_count=2, fields=("label",))
    seen.append(sum(_labels(ds), []))
  assert len(seen[0]) == len(seen[1]) == 12
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(24))


def test_pipeline_replaces_and_counts_corrupt_records(data_dir, caplog):
  shard = data_dir / "train-00001.array_record"  # records 5..9; corrupt record 7
  w = array_record_module.ArrayRecordWriter(str(shard), writer.WRITER_OPTIONS)
  for i in range(5, 10):
    w.write(b"\xc1 not a record" if i == 7 else records.encode_record(_example(i)))
  w.close()
  clean = sum(_labels(pipeline.make_dataset(data_dir, "train", batch_size_per_process=1, seed=0,
                                            shuffle=False, num_epochs=1, fields=("label",))), [])
  assert clean == [i for i in range(24) if i != 7][:7] + [8] + list(range(8, 24))
  before = pipeline.corrupt_record_count()
  ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=1, seed=0, num_epochs=1,
                             fields=("label",))
  with caplog.at_level(logging.WARNING):
    labels = sum(_labels(ds), [])
  assert len(labels) == 24 and set(labels) == set(range(24)) - {7}  # the slot is refilled
  assert pipeline.corrupt_record_count() == before + 1
  assert "train-00001.array_record[2]" in caplog.text
  with pytest.raises(records.CorruptRecordError, match=r"train-00001.array_record\[2\]"):
    pipeline.load_split(data_dir, "train")


def _global_batches(data_dir, count, steps, state=None, gbs=8):
  """The concatenated per-process batches (labels) of `steps` steps at `count` processes, and
  the iterator states after them."""
  its = [iter(pipeline.make_dataset(data_dir, "train", batch_size_per_process=gbs // count,
                                    seed=5, process_index=p, process_count=count,
                                    fields=("label",))) for p in range(count)]
  if state is not None:
    for it in its:
      it.set_state(state)
  out = [sum((next(it)["label"].tolist() for it in its), []) for _ in range(steps)]
  return out, [it.get_state() for it in its]


def test_pipeline_global_order_independent_of_process_count(data_dir):
  # 24 records, global batch 20: batches straddle the epoch boundaries (each epoch reshuffled).
  ref, _ = _global_batches(data_dir, 1, 10, gbs=20)
  flat = sum(ref, [])
  assert [sorted(flat[e * 24:(e + 1) * 24]) for e in range(5)] == [list(range(24))] * 5
  assert flat[:24] != flat[24:48]
  for count in (2, 4):
    assert _global_batches(data_dir, count, 10, gbs=20)[0] == ref, count
  assert sum(_global_batches(data_dir, 2, 9, gbs=8)[0], []) == flat[:72]  # same stream


def test_pipeline_state_restores_under_another_process_count(data_dir):
  ref, _ = _global_batches(data_dir, 1, 11)  # 88 records: crosses three epoch boundaries
  first, states = _global_batches(data_dir, 2, 5)
  assert first == ref[:5]
  assert all(s == states[0] for s in states)  # the global position, equal in every process
  assert states[0] == {"position": 40, "global_batch_size": 8}
  for count in (1, 2, 4):
    assert _global_batches(data_dir, count, 6, state=states[0])[0] == ref[5:], count


def test_pipeline_missing_inputs(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"'nope'.*\['train'\]"):
    pipeline.make_dataset(data_dir, "nope", batch_size_per_process=2, seed=0)
  with pytest.raises(ValueError, match="caption"):
    pipeline.make_dataset(data_dir, "train", batch_size_per_process=2, seed=0,
                          fields=("latents", "caption"))
  with pytest.raises(FileNotFoundError, match="vft prep"):
    pipeline.make_dataset(tmp_path / "missing", "train", batch_size_per_process=2, seed=0)
  (data_dir / "train-00003.array_record").unlink()
  with pytest.raises(FileNotFoundError, match="train-00003"):
    pipeline.make_dataset(data_dir, "train", batch_size_per_process=2, seed=0)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_pipeline_iterator_state_round_trip(data_dir):
  make = lambda: pipeline.make_dataset(data_dir, "train", batch_size_per_process=5, seed=1,
                                       fields=("latents", "label"))
  it = iter(make())
  for _ in range(7):  # crosses an epoch boundary
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(make())
  it2.set_state(state)
  for e in expected:
    _assert_batches_equal(next(it2), e)


def test_pipeline_iterator_checkpoint_with_orbax(data_dir, tmp_path):
  make = lambda: pipeline.make_dataset(data_dir, "train", batch_size_per_process=3, seed=2,
                                       fields=("latents", "label"))
  it = iter(make())
  for _ in range(5):
    next(it)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = [next(it) for _ in range(3)]
  it2 = iter(make())
  next(it2)  # restore must overwrite the position
  mngr2 = ocp.CheckpointManager(tmp_path / "ckpt")
  assert mngr2.latest_step() == 5
  mngr2.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  for e in expected:
    _assert_batches_equal(next(it2), e)
  mngr.close()
  mngr2.close()


def test_to_global_batch_on_cpu_mesh(data_dir):
  assert jax.device_count() == 8
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=8, seed=0, fields=None)
  local = next(iter(ds))
  glob = pipeline.to_global_batch(local, sharding)
  assert glob["latents"].shape == (8,) + LATENT_SHAPE
  assert glob["latents"].dtype == jnp.bfloat16
  assert glob["latents"].sharding == sharding
  assert len(glob["latents"].addressable_shards) == 8
  assert glob["latents"].addressable_shards[0].data.shape == (1,) + LATENT_SHAPE
  np.testing.assert_array_equal(np.asarray(glob["latents"]), local["latents"])
  np.testing.assert_array_equal(np.asarray(glob["label"]), local["label"])
  assert isinstance(glob["video_id"], np.ndarray)  # strings stay on the host


def test_load_split_in_order(data_dir):
  examples = pipeline.load_split(data_dir, "train")
  assert [e["label"] for e in examples] == list(range(24))
  assert set(examples[0]) == {"latents", "label", "video_id"}
  only = pipeline.load_split(data_dir, "train", fields=("video_id",))
  assert only[3] == {"video_id": "v/3"}


# ---------------------------------------------------------------- synthetic videos


def test_synthetic_videos_deterministic_varied_and_moving():
  a = synthetic.make_video(5)
  assert a.shape == (17, 64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.make_video(5))
  videos = synthetic.make_videos(range(30), num_frames=9, size=32)
  assert videos.shape == (30, 9, 32, 32, 3)
  for i in range(1, 30):
    assert not np.array_equal(videos[0], videos[i])
  diffs = np.abs(np.diff(videos.astype(np.int16), axis=1)).mean(axis=(2, 3, 4))  # [30, 8]
  assert np.all(diffs > 0), "every pair of consecutive frames should differ"
  assert videos.std() > 30  # not blank: colourful scenes


# ---------------------------------------------------------------- video IO


def test_read_video_and_iter_clips_on_demo_clip():
  full = video_io.read_video(DESK)
  assert full.shape == (136, 256, 256, 3) and full.dtype == np.uint8
  small = video_io.read_video(DESK, num_frames=17, fps=8, size=64)
  assert small.shape == (17, 64, 64, 3)
  late = video_io.read_video(DESK, num_frames=2, start_sec=1.0)
  np.testing.assert_array_equal(late[0], full[30])  # 30 fps: frame 30 shows at 1.0 s
  sampled = video_io.read_video(DESK, fps=10)
  np.testing.assert_array_equal(sampled[3], full[9])
  clips = list(video_io.iter_clips(DESK, clip_len=17, size=64, fps=8))
  assert len(clips) == 2 and all(c.shape == (17, 64, 64, 3) for c in clips)
  np.testing.assert_array_equal(clips[0], small)
  clips = list(video_io.iter_clips(DESK, clip_len=5, size=32, stride=3, max_clips=4))
  assert len(clips) == 4 and clips[1].shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(clips[0][3], clips[1][0])


def test_write_video_round_trip(tmp_path):
  frames = video_io.read_video(DESK, num_frames=9, size=48, crop=False)[:, :33, :47]
  report.write_video(tmp_path / "out.mp4", frames, fps=8)
  back = video_io.read_video(tmp_path / "out.mp4")
  assert back.shape == (9, 34, 48, 3)  # odd sizes padded to even
  assert np.abs(back[:, :33, :47].astype(np.float32) - frames).mean() < 6
  report.write_gif(tmp_path / "out.gif", frames, fps=8)
  assert (tmp_path / "out.gif").stat().st_size > 0


def test_video_io_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.mp4"):
    video_io.read_video(tmp_path / "missing.mp4")
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"this is not a video" * 50)
  with pytest.raises(ValueError, match="bad.mp4"):
    video_io.read_video(bad)
  with pytest.raises(ValueError, match="only 136 frames"):
    video_io.read_video(DESK, num_frames=500)
  with pytest.raises(ValueError, match="136 frames, fewer than the 137 needed"):
    video_io.read_video_uniform(DESK, 137, size=16)


def test_truncated_video_is_an_error_naming_the_frame(tmp_path):
  """The first 20000 bytes of a 250-frame mp4 (header intact): 10 frames decode, then FFmpeg's
  frame-threaded decoder stops silently. Every read needing a later frame raises."""
  src = Path(__file__).parents[2] / "shared" / "data" / "videos" / "airplane_field.mp4"
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(src.read_bytes()[:20000])
  head = video_io.read_video(cut, num_frames=10, size=32)  # the intact part reads
  np.testing.assert_array_equal(head, video_io.read_video(src, num_frames=10, size=32))
  msg = r"cut.mp4: decoding stopped at frame 10 .*0.360 s.*10.000 s, 250 frames"
  reads = {"read_video": lambda: video_io.read_video(cut, size=32),
           "read_video_11": lambda: video_io.read_video(cut, num_frames=11, size=32),
           "read_video_uniform": lambda: video_io.read_video_uniform(cut, 17, size=32),
           "iter_clips": lambda: list(video_io.iter_clips(cut, clip_len=17, size=32, fps=8)),
           "seek": lambda: video_io.read_video(cut, start_sec=0.2, fps=8, size=32)}
  for name, read in reads.items():
    with pytest.raises(video_io.DecodeError, match=msg):
      read()


# ---------------------------------------------------------------- prep


def test_demo_clip_paths():
  paths = prep.demo_clip_paths()
  assert set(paths) == {"vidtok_desk", "asl_again", "asl_book", "pedestrians_a",
                        "sintel_snow_cg", "tree_wind"}
  assert all(p.is_file() for p in paths.values())
  assert (DESK.parent / "ATTRIBUTION.md").is_file()


def test_prep_demo_dataset_tiny(tmp_path):
  codec = PatchCodec(spatial_factor=8)
  kwargs = dict(num_train_synthetic=4, num_eval_synthetic=2, train_real=("vidtok_desk",),
                eval_real=("asl_book",), real_clips_per_video=1, eval_clips_per_video=1,
                batch_size=4, progress=False)
  manifest = prep.prep_demo_dataset(tmp_path, codec, **kwargs)
  train, evals = manifest["splits"]["train"], manifest["splits"]["eval"]
  assert train["num_records"] == 5 and evals["num_records"] == 3
  assert train["complete"] and evals["complete"]
  assert train["meta"]["codec"] == {"name": "patch", "spatial_factor": 8, "time_factor": 4,
                                    "latent_channels": 768}
  assert train["meta"]["real_clips"] == {"vidtok_desk": ["vidtok_desk/clip0"]}
  assert evals["meta"]["real_clips"] == {"asl_book": ["asl_book/clip0"]}
  assert train["example_spec"]["latents"] == {"shape": [5, 8, 8, 768], "dtype": "bfloat16"}
  assert "video" not in train["example_spec"]

  examples = pipeline.load_split(tmp_path, "eval")
  assert [e["video_id"] for e in examples] == [
      "asl_book/clip0", "synthetic_eval/000000", "synthetic_eval/000001"]
  latents = jnp.asarray(np.stack([e["latents"] for e in examples]).astype(np.float32))
  pixels = np.stack([e["video"] for e in examples]).astype(np.float32) / 127.5 - 1.0
  assert pixels.shape == (3, 17, 64, 64, 3)
  np.testing.assert_allclose(np.asarray(codec.decode(latents)), pixels, atol=2 ** -7)
  train_ids = [e["video_id"] for e in pipeline.load_split(tmp_path, "train")]
  assert sorted(train_ids) == ["synthetic/000000", "synthetic/000001", "synthetic/000002",
                               "synthetic/000003", "vidtok_desk/clip0"]

  shard = tmp_path / "train-00000.array_record"
  mtime = shard.stat().st_mtime_ns
  assert prep.prep_demo_dataset(tmp_path, codec, **kwargs) == manifest  # idempotent
  assert shard.stat().st_mtime_ns == mtime
  with pytest.raises(ValueError, match="overwrite=True"):
    prep.prep_demo_dataset(tmp_path, codec, **dict(kwargs, seed=1))
  batch = next(iter(pipeline.make_dataset(tmp_path, "train", batch_size_per_process=2, seed=0)))
  assert batch["latents"].shape == (2, 5, 8, 8, 768)
