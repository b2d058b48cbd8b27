"""`vft tokenize-dataset` on a tiny prep-layout dataset: the stored ids are the tokenizer's own,
labels/captions are carried over, the manifest records the tokenizer, a corrupt record is
skipped and listed, a re-run resumes, and mismatched inputs are refused."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from array_record.python import array_record_module

from tests.tiny_inference import CODEC, tiny_model
from vft import VideoTokenizer
from vft.data import pipeline, synthetic, tokenize_job
from vft.data.records import encode_record
from vft.data.writer import MANIFEST_NAME, WRITER_OPTIONS, ShardWriter

NUM = 10  # train clips: shards of 4, 4, 2


def write_input(out, channels=192, corrupt=None):
  """A `vft prep`-layout dataset: latents [5, 4, 4, C] bf16, label, caption, video_id; the
  manifest's `labels`. `corrupt`: (shard, index) of a record replaced by garbage bytes."""
  videos = synthetic.make_videos(range(NUM), 17, 16)
  lat = np.asarray(CODEC.encode(jnp.asarray(videos, jnp.float32) / 127.5 - 1.0))
  lat = lat[..., :channels].astype(jnp.bfloat16)
  with ShardWriter(out, "train", records_per_shard=4, meta={"label_names": ["a", "b", "c"]}) as w:
    for i in range(NUM):
      w.write({"latents": lat[i], "label": np.int32(i % 3), "caption": f"clip {i}",
               "video_id": f"synthetic/{i}"})
  path = os.path.join(out, MANIFEST_NAME)
  manifest = json.load(open(path))
  if corrupt is not None:
    shard, index = corrupt
    name = manifest["splits"]["train"]["shards"][shard]["file"]
    first = 4 * shard
    w = array_record_module.ArrayRecordWriter(os.path.join(out, name), WRITER_OPTIONS)
    for j in range(manifest["splits"]["train"]["shards"][shard]["num_records"]):
      i = first + j
      w.write(b"\x00not msgpack" if j == index else encode_record(
          {"latents": lat[i], "label": np.int32(i % 3), "caption": f"clip {i}",
           "video_id": f"synthetic/{i}"}))
    w.close()
  return str(out), lat.astype(np.float32)


@pytest.fixture(scope="module")
def tok():
  model, params = tiny_model()
  return VideoTokenizer(model, params, CODEC, frame_size=(16, 16), source="/runs/tiny_tok")


@pytest.fixture(scope="module")
def tokenized(tok, tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  src, lat = write_input(root / "in", corrupt=(1, 2))
  manifest = tokenize_job.run_tokenize(tok, src, str(root / "out"), batch_size=4,
                                       progress=False)
  return root, src, lat, manifest


def test_tokens_equal_the_tokenizers_ids(tok, tokenized):
  root, _, lat, manifest = tokenized
  records = pipeline.load_split(root / "out", "train")
  kept = [i for i in range(NUM) if i != 6]  # shard 1, index 2 is corrupt
  assert [r["video_id"] for r in records] == [f"synthetic/{i}" for i in kept]
  ids = np.asarray(tok.runner.model_encode(tok.params, lat[kept]))
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in records]), ids)
  assert records[0]["tokens"].dtype == np.int32 and ids.shape[1:] == (5, 4)
  assert [int(r["label"]) for r in records] == [i % 3 for i in kept]
  assert [str(r["caption"]) for r in records] == [f"clip {i}" for i in kept]
  assert all("latents" not in r for r in records)
  # The manifest: tokenizer identity, vocabulary, classes, the skipped record.
  assert manifest == json.load(open(root / "out" / MANIFEST_NAME))
  assert manifest["tokenizer"]["weights_sha256"] == tokenize_job.params_sha256(tok.params)
  assert manifest["tokenizer"]["source"] == "tiny_tok"
  assert manifest["tokenizer"]["config"]["fsq_levels"] == list(tok.model.cfg.fsq_levels)
  assert manifest["vocab_size"] == int(np.prod(tok.model.cfg.fsq_levels))
  assert manifest["label_names"] == ["a", "b", "c"] and manifest["tokens_shape"] == [5, 4]
  assert manifest["num_records"] == NUM - 1 and manifest["num_skipped"] == 1
  assert manifest["skipped"][0]["record"] == "train-00001.array_record[2]"


def test_rerun_resumes_without_rewriting(tok, tmp_path):
  src, _ = write_input(tmp_path / "in")
  out = str(tmp_path / "out")
  assert tokenize_job.run_tokenize(tok, src, out, batch_size=4, progress=False,
                                   max_shards=1) is None  # 1 of 3 shards: no manifest yet
  first = os.path.join(out, "train-00000.array_record")
  stamp = os.stat(first).st_mtime_ns
  assert not os.path.exists(os.path.join(out, MANIFEST_NAME))
  manifest = tokenize_job.run_tokenize(tok, src, out, batch_size=4, progress=False)
  assert manifest["num_records"] == NUM and len(manifest["splits"]["train"]["shards"]) == 3
  assert os.stat(first).st_mtime_ns == stamp  # the finished shard was not rewritten
  assert tokenize_job.run_tokenize(tok, src, out, batch_size=4, progress=False) == manifest
  # Another tokenizer into the same output is refused unless overwrite.
  model, params = tiny_model(seed=5)
  other = VideoTokenizer(model, params, CODEC, frame_size=(16, 16))
  with pytest.raises(ValueError):
    tokenize_job.run_tokenize(other, src, out, batch_size=4, progress=False)


def test_mismatched_input_is_refused(tok, tmp_path):
  src, _ = write_input(tmp_path / "in", channels=48)
  with pytest.raises(ValueError, match="48 channels.*expects 192"):
    tokenize_job.run_tokenize(tok, src, str(tmp_path / "out"), progress=False)
  good = write_input(tmp_path / "in2")[0]
  with pytest.raises(ValueError, match="posterior='median'"):
    tokenize_job.run_tokenize(tok, good, str(tmp_path / "o2"), posterior="median",
                              progress=False)
  with pytest.raises(FileNotFoundError):
    tokenize_job.run_tokenize(tok, str(tmp_path / "nowhere"), str(tmp_path / "o3"),
                              progress=False)


def test_uint16_tokens(tok, tokenized, tmp_path):
  root, src, _, _ = tokenized
  manifest = tokenize_job.run_tokenize(tok, src, str(tmp_path / "out"), batch_size=3,
                                       token_dtype="uint16", progress=False)
  assert manifest["token_dtype"] == "uint16"
  small = pipeline.load_split(tmp_path / "out", "train", fields=("tokens",))
  ref = pipeline.load_split(root / "out", "train", fields=("tokens",))
  assert small[0]["tokens"].dtype == np.uint16
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in small]),
                                np.stack([r["tokens"] for r in ref]))


def test_output_is_an_ar_training_dataset(tokenized):
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from configs import ar_c2v
  from vft.train import ar_task
  root, _, _, _ = tokenized
  cfg = ar_c2v.get_config("tiny")
  cfg.model.num_classes = 3
  info = ar_task.check_token_dataset(cfg, str(root / "out"))
  assert info["tokens"] == [5, 4] and info["label_names"] == ["a", "b", "c"]
  cfg.model.num_classes = 12
  with pytest.raises(ValueError, match="label_names has 3 classes"):
    ar_task.check_token_dataset(cfg, str(root / "out"))


def test_cli_subprocess(tmp_path):
  """`python -m vft.main tokenize-dataset` with a tokenizer workdir (config.json + checkpoint):
  the ids equal those of the same tokenizer loaded in-process."""
  import subprocess
  import sys
  import jax
  from tests.helpers import tiny_config
  from vft import checkpoint as ckpt_lib
  from vft.train import optimizer as optim_lib
  from vft.train import state as state_lib
  from vft.train.loop import build_model
  from tests.tiny_inference import random_like
  wd = tmp_path / "tokenizer"
  config = tiny_config(wd / "data")
  spec = CODEC.latent_shape(17, 16, 16)
  model, tx = build_model(config, spec), optim_lib.make_optimizer(config)
  shapes = jax.eval_shape(lambda k: state_lib.create_state(model, tx, k, (1, *spec), False),
                          jax.random.key(0))
  params = random_like(shapes.params, seed=3)
  state = state_lib.TrainState(step=jnp.asarray(1, jnp.int32), params=params,
                               opt_state=tx.init(params), ema_params=None)
  wd.mkdir()
  (wd / "config.json").write_text(config.to_json_best_effort(indent=2))
  ckpt = ckpt_lib.Checkpointer(str(wd / "checkpoints"), use_async=False)
  ckpt.save(1, state)
  ckpt.close()
  src, lat = write_input(tmp_path / "in")
  out = tmp_path / "out"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  res = subprocess.run([sys.executable, "-m", "vft.main", "tokenize-dataset",
                        f"--tokenizer={wd}", f"--input={src}", f"--output={out}",
                        "--batch_size=4"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  summary = json.loads(res.stdout.strip().splitlines()[0])
  assert summary["num_records"] == NUM and summary["num_skipped"] == 0
  tok = VideoTokenizer.load(str(wd))
  records = pipeline.load_split(out, "train", fields=("tokens",))
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in records]),
                                np.asarray(tok.runner.model_encode(tok.params, lat)))
