"""The prep job at scale (issue #4): inputs, clip sampling, shards, resume, process slices."""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from vft.data import clips as clips_lib
from vft.data import pipeline, prep_config, prep_job, sources
from vft.eval.report import write_video
from vft.models.vae import PatchCodec
from tests.helpers import apply_overrides

VIDEOS = Path("/work/shared/data/videos")
# Long enough for a 17-frame clip at 4 fps, plus two that are too short.
LONG = ["bikes_street", "chaplin_bw", "pedestrians_a", "tree_wind", "vidtok_desk"]
SHORT = ["orange_roll", "realshort_plant"]
needs_videos = pytest.mark.skipif(not VIDEOS.is_dir(), reason="shared sample videos not present")


def _cfg(**overrides):
  c = prep_config.default_config("tiny")
  c.progress = False
  c.videos_per_shard = 2
  c.batch_size = 8
  return apply_overrides(c, overrides)


def _manifest_csv(tmp_path: Path, names, corrupt: bool = True) -> Path:
  """A CSV with labels and captions over shared videos (+ one corrupt copy)."""
  rows = ["path,label,caption"]
  for i, n in enumerate(names):
    rows.append(f"{VIDEOS / (n + '.mp4')},{'street' if i % 2 else 'nature'},\"clip of {n}\"")
  if corrupt:
    bad = tmp_path / "broken.mp4"
    data = (VIDEOS / "tree_wind.mp4").read_bytes()
    bad.write_bytes(data[:2000] + b"\0" * 5000)  # header cut, garbage after
    rows.append(f"{bad},nature,a broken file")
  path = tmp_path / "videos.csv"
  path.write_text("\n".join(rows) + "\n")
  return path


def _shard_bytes(out: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(out.glob("*-*.array_record"))}


# ---- inputs ---------------------------------------------------------------------------------
def test_list_inputs_folder_glob_and_manifests(tmp_path):
  for sub in ("cats", "dogs"):
    (tmp_path / "vids" / sub).mkdir(parents=True)
  for name in ("cats/a.mp4", "dogs/b.mp4", "dogs/c.avi", "dogs/notes.txt"):
    (tmp_path / "vids" / name).write_bytes(b"x")
  items, vocab = sources.list_inputs(str(tmp_path / "vids"), label_from_dir=True)
  assert [it.video_id for it in items] == ["cats/a", "dogs/b", "dogs/c"]
  assert vocab == ["cats", "dogs"] and [it.label for it in items] == [0, 1, 1]
  items, vocab = sources.list_inputs(str(tmp_path / "vids" / "*" / "*.mp4"))
  assert [Path(it.path).name for it in items] == ["a.mp4", "b.mp4"] and vocab is None

  jl = tmp_path / "m.jsonl"
  jl.write_text("\n".join(json.dumps(r) for r in [
      {"path": "vids/dogs/b.mp4", "label": "zebra", "caption": "a dog", "start": 1, "end": 3.5},
      {"path": str(tmp_path / "vids/cats/a.mp4"), "label": "aardvark"},
      {"path": "vids/cats/a.mp4", "label": "aardvark"}]) + "\n")
  items, vocab = sources.list_inputs(str(jl))
  assert vocab == ["aardvark", "zebra"] and [it.label for it in items] == [1, 0, 0]
  assert items[0].path == str(tmp_path / "vids/dogs/b.mp4")
  assert (items[0].start, items[0].end, items[0].caption) == (1.0, 3.5, "a dog")
  assert items[0].video_id == "vids/dogs/b@1-3.5"
  assert len({it.video_id for it in items}) == 3  # duplicates get distinct ids

  vocab_file = tmp_path / "classes.txt"
  vocab_file.write_text("zebra\naardvark\n")
  items, vocab = sources.list_inputs(str(jl), label_vocab=str(vocab_file))
  assert vocab == ["zebra", "aardvark"] and [it.label for it in items] == [0, 1, 1]
  vocab_file.write_text("zebra\n")
  with pytest.raises(ValueError, match="not in the vocabulary"):
    sources.list_inputs(str(jl), label_vocab=str(vocab_file))

  csv = tmp_path / "m.csv"
  csv.write_text("path,label\nvids/cats/a.mp4,3\nvids/dogs/b.mp4,\n")
  items, vocab = sources.list_inputs(str(csv))
  assert vocab is None and [it.label for it in items] == [3, None]
  csv.write_text("file,label\nvids/cats/a.mp4,3\n")
  with pytest.raises(ValueError, match="missing the 'path'"):
    sources.list_inputs(str(csv))
  with pytest.raises(FileNotFoundError, match="no video files match"):
    sources.list_inputs(str(tmp_path / "nothing*.mp4"))


# ---- clip sampling ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
  """40 frames at 8 fps, 48x64; frame k is uniformly grey at level 6k (decodable identity)."""
  path = tmp_path_factory.mktemp("vid") / "counter.mp4"
  frames = np.stack([np.full((48, 64, 3), 6 * k, np.uint8) for k in range(40)])
  write_video(path, frames, fps=8)
  return path


def _levels(clip):
  return np.round(clip.reshape(len(clip), -1).mean(-1) / 6).astype(int)


def test_sample_clips_even_random_crop_and_short(counter_video):
  item = sources.VideoItem(path=str(counter_video), video_id="counter")
  spec = clips_lib.ClipSpec(num_frames=5, fps=4.0, size=32, clips_per_video=3)
  out = clips_lib.sample_clips(item, spec, np.random.default_rng(0))
  # 4 fps of an 8 fps video = every 2nd frame; 20 sampled frames -> starts 0, 8, 15 (linspace)
  assert [round(s, 3) for s, _ in out] == [0.0, 2.0, 3.75]
  np.testing.assert_array_equal(_levels(out[0][1]), [0, 2, 4, 6, 8])
  np.testing.assert_array_equal(_levels(out[2][1]), [30, 32, 34, 36, 38])
  assert all(c.shape == (5, 32, 32, 3) and c.dtype == np.uint8 for _, c in out)

  rnd = clips_lib.ClipSpec(num_frames=5, fps=4.0, size=32, clips_per_video=2, sampling="random",
                           crop="random")
  a = clips_lib.sample_clips(item, rnd, np.random.default_rng([0, 7]))
  b = clips_lib.sample_clips(item, rnd, np.random.default_rng([0, 7]))
  assert [s for s, _ in a] == [s for s, _ in b]
  np.testing.assert_array_equal(a[0][1], b[0][1])
  assert len({s for s, _ in a}) == 2

  seg = sources.VideoItem(path=str(counter_video), video_id="c", start=1.0, end=2.5)
  spec6 = clips_lib.ClipSpec(num_frames=6, fps=4.0, size=32)
  with pytest.raises(clips_lib.ShortVideoError, match="too short: 6 frames"):
    clips_lib.sample_clips(seg, clips_lib.ClipSpec(num_frames=7, fps=4.0, size=32),
                           np.random.default_rng(0))
  (s, c), = clips_lib.sample_clips(seg, spec6, np.random.default_rng(0))
  np.testing.assert_array_equal(_levels(c), [8, 10, 12, 14, 16, 18])
  loop = clips_lib.ClipSpec(num_frames=9, fps=4.0, size=32, short="loop")
  (_, c), = clips_lib.sample_clips(seg, loop, np.random.default_rng(0))
  np.testing.assert_array_equal(_levels(c), [8, 10, 12, 14, 16, 18, 8, 10, 12])
  with pytest.raises(ValueError, match="sampling"):
    clips_lib.ClipSpec(sampling="middle")


# ---- the job ---------------------------------------------------------------------------------
@needs_videos
def test_prep_manifest_labels_captions_skips_and_parity(tmp_path):
  csv = _manifest_csv(tmp_path, LONG[:3] + SHORT[:1])
  out = tmp_path / "out"
  manifest = prep_job.run_prep(_cfg(), str(csv), str(out))
  assert manifest == json.loads((out / "manifest.json").read_text())
  assert manifest["num_records"] == 3 and manifest["num_videos"] == 5
  assert manifest["num_skipped"] == 2
  reasons = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
  assert "too short" in reasons["orange_roll.mp4"]
  assert "broken.mp4" in reasons and "ShortVideoError" not in reasons["broken.mp4"]
  assert manifest["latent_shape"] == [5, 4, 4, 768] and manifest["dtype"] == "bfloat16"
  assert manifest["vae"]["name"] == "patch" and manifest["labels"] == ["nature", "street"]
  assert len(manifest["config_hash"]) == 16
  assert [s["file"] for s in manifest["splits"]["train"]["shards"]] == [
      "train-00000.array_record", "train-00001.array_record", "train-00002.array_record"]
  shard0 = json.loads((out / "train-00000.json").read_text())
  assert shard0["num_records"] == 2 and shard0["skipped"] == []

  records = pipeline.load_split(out, "train")
  assert [r["video_id"].split("/")[-2:] for r in records] == [[n, "clip0"] for n in LONG[:3]]
  assert [r["label"] for r in records] == [0, 1, 0]
  assert records[1]["caption"] == f"clip of {LONG[1]}"
  # Parity: the stored latents are PatchCodec(decoded clip) in bfloat16.
  spec = clips_lib.ClipSpec.from_config(_cfg().clips)
  item = sources.VideoItem(path=str(VIDEOS / f"{LONG[1]}.mp4"), video_id="x")
  (_, px), = clips_lib.sample_clips(item, spec, np.random.default_rng(0))
  want = PatchCodec(spatial_factor=8).encode(jnp.asarray(clips_lib.to_model_range(px))[None])
  np.testing.assert_array_equal(records[1]["latents"],
                                np.asarray(want[0].astype(jnp.bfloat16)))
  # Training-side reading of the same shards.
  batch = next(iter(pipeline.make_dataset(out, "train", batch_size_per_process=2, seed=0,
                                          process_count=1, process_index=0,
                                          fields=("latents", "label"))))
  assert batch["latents"].shape == (2, 5, 4, 4, 768) and batch["label"].shape == (2,)


@needs_videos
def test_prep_resume_after_interruption_gives_identical_shards(tmp_path):
  csv = _manifest_csv(tmp_path, LONG + SHORT, corrupt=True)
  full = tmp_path / "full"
  ref = prep_job.run_prep(_cfg(), str(csv), str(full))
  assert ref is not None and ref["num_skipped"] == 3

  part = tmp_path / "part"
  assert prep_job.run_prep(_cfg(max_shards=2), str(csv), str(part)) is None  # "killed"
  assert not (part / "manifest.json").exists()
  # A shard killed after its file was renamed but before its manifest: rewritten on resume.
  (part / "train-00002.array_record").write_bytes(b"half a shard")
  done = prep_job.run_prep(_cfg(), str(csv), str(part))
  assert done == ref
  assert _shard_bytes(part) == _shard_bytes(full)
  assert sorted(p.name for p in part.iterdir()) == sorted(p.name for p in full.iterdir())
  # Re-running a finished job changes nothing; another config is refused.
  mtimes = {p.name: p.stat().st_mtime_ns for p in part.iterdir()}
  assert prep_job.run_prep(_cfg(), str(csv), str(part)) == ref
  assert {p.name: p.stat().st_mtime_ns for p in part.iterdir() if p.suffix != ".json"} == {
      k: v for k, v in mtimes.items() if not k.endswith(".json")}
  with pytest.raises(ValueError, match="another config or input list"):
    prep_job.run_prep(_cfg(**{"clips.size": 64}), str(csv), str(part))
  redone = prep_job.run_prep(_cfg(**{"clips.size": 64, "overwrite": True}), str(csv), str(part))
  assert redone["latent_shape"] == [5, 8, 8, 768]


@needs_videos
def test_prep_process_slices_are_disjoint_and_union_equals_single(tmp_path):
  csv = _manifest_csv(tmp_path, SHORT + LONG, corrupt=False)
  single = tmp_path / "single"
  ref = prep_job.run_prep(_cfg(eval_videos=1), str(csv), str(single))
  multi = tmp_path / "multi"
  first = prep_job.run_prep(_cfg(eval_videos=1, process_index=1, process_count=2), str(csv),
                            str(multi))
  assert first is None  # process 0's shards are not written yet
  mine = set(_shard_bytes(multi))
  second = prep_job.run_prep(_cfg(eval_videos=1, process_index=0, process_count=2), str(csv),
                             str(multi))
  assert second == ref
  both = _shard_bytes(multi)
  assert mine and mine < set(both) and both == _shard_bytes(single)
  assert ref["splits"]["eval"]["num_records"] == 1
  (ev,) = pipeline.load_split(single, "eval")
  assert ev["video"].shape == (17, 32, 32, 3) and ev["video_id"] == "vidtok_desk/clip0"
  ids = [r["video_id"] for r in pipeline.load_split(single, "train")]
  assert ids == [f"{n}/clip0" for n in LONG[:-1]]  # the ids are relative to the videos' folder


def test_pipeline_samples_posterior_from_moments(tmp_path):
  from vft.data.writer import ShardWriter
  rng = np.random.default_rng(0)
  moments = [np.concatenate([rng.normal(size=(2, 2, 2, 16)), rng.uniform(-3, 0, (2, 2, 2, 16))],
                            -1).astype(np.float32) for _ in range(3)]
  with ShardWriter(tmp_path, "train", records_per_shard=2) as w:
    for i, m in enumerate(moments):
      w.write({"moments": m, "video_id": f"v{i}"})
  assert pipeline.latent_shape(tmp_path, "train") == [2, 2, 2, 16]
  make = lambda: iter(pipeline.make_dataset(  # noqa: E731
      tmp_path, "train", batch_size_per_process=3, seed=0, shuffle=False, process_index=0,
      process_count=1))
  it = make()
  e1, e2 = next(it)["latents"], next(it)["latents"]
  assert e1.shape == (3, 2, 2, 2, 16) and e1.dtype.name == "bfloat16"
  z = np.stack([(e1[i].astype(np.float32) - m[..., :16]) / np.exp(0.5 * m[..., 16:])
                for i, m in enumerate(moments)])  # the eps of this draw: standard normal
  assert abs(z.mean()) < 0.25 and 0.7 < z.std() < 1.3
  assert not np.array_equal(e1, e2)  # a fresh draw every epoch
  np.testing.assert_array_equal(next(make())["latents"], e1)  # seeded: a restart draws the same
  batch = next(iter(pipeline.make_dataset(tmp_path, "train", batch_size_per_process=3, seed=0,
                                          process_index=0, process_count=1, fields=None)))
  assert batch["moments"].shape == (3, 2, 2, 2, 32)  # fields=None: the stored moments


@pytest.mark.slow
def test_prep_vidtok_moments_and_keyed_samples(tmp_path, counter_video):
  from vft.models.vae import VidTokCodec, VidTokConfig
  from vft.models.vae import vidtok as vt
  import jax
  cfg = VidTokConfig(ch=4, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
  codec = VidTokCodec(cfg, vt.init_params(cfg, jax.random.key(0), num_frames=5, size=16))
  videos = tmp_path / "v"
  videos.mkdir()
  for i in range(3):
    shutil.copy(counter_video, videos / f"c{i}.mp4")
  c = _cfg(store="moments", dtype="float32", **{"clips.num_frames": 5, "clips.size": 16,
                                                "codec.name": "vidtok"})
  m = prep_job.run_prep(c, str(videos), str(tmp_path / "out"), codec=codec)
  assert m["latent_field"] == "moments" and m["latent_shape"] == [2, 2, 2, 16]
  (rec, *_) = pipeline.load_split(tmp_path / "out", "train")
  px = clips_lib.sample_clips(sources.VideoItem(str(videos / "c0.mp4"), "c0"),
                              clips_lib.ClipSpec.from_config(c.clips), None)[0][1]
  want = codec.moments(jnp.asarray(clips_lib.to_model_range(px))[None])[0]
  np.testing.assert_allclose(rec["moments"], np.asarray(want), rtol=1e-5, atol=1e-6)
  # Stored posterior samples are keyed per (video, clip): the same in any batch size.
  c2 = _cfg(store="sample", **{"clips.num_frames": 5, "clips.size": 16, "codec.name": "vidtok"})
  s8 = prep_job.run_prep(c2, str(videos), str(tmp_path / "s8"), codec=codec)
  s1 = prep_job.run_prep(_cfg(store="sample", batch_size=1, **{
      "clips.num_frames": 5, "clips.size": 16, "codec.name": "vidtok"}), str(videos),
      str(tmp_path / "s1"), codec=codec)
  assert s8["config_hash"] == s1["config_hash"]  # the batch size does not change the output
  a = pipeline.load_split(tmp_path / "s8", "train")
  b = pipeline.load_split(tmp_path / "s1", "train")
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["latents"], y["latents"])
  assert not np.array_equal(a[0]["latents"], a[1]["latents"])  # different noise per video


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Shared videos -> tiny shards (4 train clips, 1 eval clip), as `vft prep` makes them."""
  tmp = tmp_path_factory.mktemp("prepared")
  csv = _manifest_csv(tmp, SHORT + LONG, corrupt=True)
  out = tmp / "out"
  prep_job.run_prep(_cfg(eval_videos=2), str(csv), str(out))  # vidtok_desk + the broken file
  return out


def _train_config(data_dir, **overrides):
  from tests.helpers import tiny_config
  return tiny_config(data_dir, **{"model.latent_channels": 768, "codec.spatial_factor": 8,
                                  "data.size": 32, "data.global_batch_size": 8, **overrides})


def test_check_dataset_against_model_config(prepared):
  assert pipeline.check_dataset(_train_config(prepared), prepared) == [5, 4, 4, 768]
  cases = [({"model.latent_channels": 192}, "latents have 768 channels .*latent_channels=192"),
           ({"data.size": 64}, r"latent shape \[5, 4, 4, 768\], but config.codec .* makes "
                               r"\[5, 8, 8, 768\]"),
           ({"model.max_latent_frames": 4}, "5 latent frames .*max_latent_frames=4"),
           ({"model.patch_size": (1, 3, 3)}, "not divisible by config.model.patch_size"),
           ({"codec.pool": 2, "model.latent_channels": 192, "data.size": 64},
            "VAE pool=1 .* config.codec gives pool=2"),
           ({"train.repa_weight": 0.5}, "needs REPA targets.*no 'repa' field")]
  for overrides, match in cases:
    with pytest.raises(ValueError, match=match) as e:
      pipeline.check_dataset(_train_config(prepared, **overrides), prepared)
    assert "manifest.json (split 'train')" in str(e.value)


@pytest.mark.slow
def test_training_consumes_prepared_shards(prepared, tmp_path):
  from vft.train import loop
  cfg = _train_config(prepared, total_steps=2)
  tr = loop.Trainer(cfg, str(tmp_path / "run"))
  losses = [float(tr.step(tr.next_batch())["loss"]) for _ in range(2)]
  assert all(np.isfinite(losses))
  lat, vid = loop.load_eval_clips(cfg, str(prepared))
  assert lat.shape == (1, 5, 4, 4, 768) and vid.shape == (1, 17, 32, 32, 3)
  tr.close()


def test_rotation_metadata_is_applied(tmp_path, monkeypatch):
  """A frame whose DISPLAYMATRIX says 90 degrees comes out turned (short side still `size`)."""
  from vft.data import video_io
  x = np.linspace(0, 255, 64)[None, :, None] * np.ones((48, 1, 3))
  frames = np.stack([x, 255 - x]).astype(np.uint8)  # a horizontal ramp, 48x64
  write_video(tmp_path / "ramp.mp4", frames, fps=8)
  plain = video_io.read_video(tmp_path / "ramp.mp4", size=24, crop=False)
  assert plain.shape == (2, 24, 32, 3)
  monkeypatch.setattr(video_io, "_rotation_quarters", lambda frame: 1)
  turned = video_io.read_video(tmp_path / "ramp.mp4", size=24, crop=False)
  assert turned.shape == (2, 32, 24, 3)
  np.testing.assert_array_equal(turned, np.rot90(plain, 1, axes=(1, 2)))
  assert turned[0, 0].mean() > 200 and turned[0, -1].mean() < 50  # the ramp now runs vertically
  cropped = video_io.read_video(tmp_path / "ramp.mp4", num_frames=1, size=24, crop=True)
  assert cropped.shape == (1, 24, 24, 3)


def test_record_schema_moments_and_text_fields():
  from vft.data import records
  import ml_dtypes
  ex = {"moments": np.zeros((2, 2, 2, 8), np.float32), "text_emb": np.ones((4, 6), np.float32),
        "text_len": 3, "caption": "a dog", "label": 2}
  back = records.decode_record(records.encode_record(ex))
  assert back["text_len"] == 3 and back["text_emb"].shape == (4, 6)
  np.testing.assert_array_equal(back["moments"], ex["moments"])
  with pytest.raises(ValueError, match="even"):
    records.validate_example({"moments": np.zeros((2, 2, 2, 7), np.float32)})
  with pytest.raises(ValueError, match="do not match latents"):
    records.validate_example({"moments": np.zeros((2, 2, 2, 8), np.float32),
                              "latents": np.zeros((2, 2, 2, 8), ml_dtypes.bfloat16)})
  with pytest.raises(ValueError, match="missing required field 'latents' \\(or 'moments'\\)"):
    records.validate_example({"caption": "x"})
