"""Memory and compile plan: the real train step compiled ahead of time for a target topology.

For a config and a topology ("v5p-256", "v5e-16", "h100-8", ...) every candidate layout (mesh
sizes (data, fsdp, tensor) and a remat policy) is lowered and compiled from this host without
the accelerator: TPU topologies through libtpu's compile-only devices
(`jax.experimental.topologies`, needs the `jax[tpu]` extra), H100 on as many simulated CPU
devices (`--xla_force_host_platform_device_count`), an estimate since XLA:CPU buffer assignment
is not the GPU compiler's. Each row reports per-chip bytes (params, optimizer state, EMA and
the batch from the sharded abstract state; temporaries from `compiled.memory_analysis()`), FLOPs
per step (analytic model FLOPs and XLA's `cost_analysis()`) and the step time at a stated MFU.
Candidates are listed fastest first; the plan picks the first that fits the chip's HBM less a
headroom. Nothing is allocated: the state is `jax.ShapeDtypeStruct`s with shardings.

Chip facts (peak dense bf16 FLOP/s, HBM per chip):
  TPU v5p 459 TFLOP/s, 95 GiB    cloud.google.com/tpu/docs/v5p
  TPU v5e 197 TFLOP/s, 16 GiB    cloud.google.com/tpu/docs/v5e
  H100 SXM 989 TFLOP/s (dense, no sparsity), 80 GiB   NVIDIA H100 Tensor Core GPU datasheet
Cloud TPU names count TensorCores for v5p (v5p-256 = 128 chips, 2 cores per chip as one
megacore device) and chips for v5e (v5e-256 = 256 chips); "2xv5e-256" is two slices.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vft import sharding
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok
from vft.models.transformer import REMAT_POLICIES
from vft.train import optimizer as optim_lib
from vft.train import partition
from vft.train import state as state_lib
from vft.train.step import grad_accum_steps, jit_train_step

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float  # dense bf16 FLOP/s per chip
  hbm_bytes: int
  source: str


CHIPS = {
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, "cloud.google.com/tpu/docs/v5p"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, "cloud.google.com/tpu/docs/v5e"),
    "h100": Chip("H100 SXM 80GB", 989e12, 80 * GiB, "NVIDIA H100 datasheet, dense bf16"),
}
# Physical chip grids of the slice sizes (chips -> libtpu topology), as Cloud TPU lays them out.
_V5P_GRIDS = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16"}
_V5E_GRIDS = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  chip: Chip
  num_chips: int  # all slices together
  tpu: dict | None = None  # get_topology_desc kwargs; None: simulated on CPU devices


def parse_topology(name: str) -> Topology:
  """"v5p-256" | "v5e-16" | "2xv5e-256" (slices) | "h100-8" -> Topology."""
  m = re.fullmatch(r"(?:(\d+)x)?(v5p|v5e|h100)-(\d+)", name.strip().lower())
  if not m:
    raise ValueError(f"--topology={name!r}: expected v5p-N, v5e-N, SxV5E-N (S slices) or "
                     "h100-N")
  slices, kind, n = int(m.group(1) or 1), m.group(2), int(m.group(3))
  chip = CHIPS[kind]
  if kind == "h100":
    if slices != 1:
      raise ValueError(f"--topology={name!r}: slices apply to TPUs only")
    return Topology(name, chip, n)
  chips = n // 2 if kind == "v5p" else n
  grids = _V5P_GRIDS if kind == "v5p" else _V5E_GRIDS
  if chips not in grids or (kind == "v5p" and n % 2):
    raise ValueError(f"--topology={name!r}: {kind} slices have "
                     f"{sorted(c * (2 if kind == 'v5p' else 1) for c in grids)} "
                     f"{'TensorCores' if kind == 'v5p' else 'chips'}")
  tpu = dict(topology_name=f"{kind}:{grids[chips]}",
             chip_config_name="megacore" if kind == "v5p" else "default",
             chips_per_host_bounds=(2, 2, 1), num_slices=slices)
  return Topology(name, chip, chips * slices, tpu)


def topology_devices(topo: Topology) -> list:
  """Compile-only TPU devices (libtpu), or `num_chips` CPU devices standing in for GPUs."""
  if topo.tpu is not None:
    from jax.experimental import topologies
    try:
      return list(topologies.get_topology_desc(platform="tpu", **topo.tpu).devices)
    except Exception as e:  # no libtpu: jax raises a RuntimeError naming the missing plugin
      raise RuntimeError(f"--topology={topo.name}: compiling for TPU needs libtpu (`make plan` "
                         f"builds .venv-tpu with jax[tpu]); {type(e).__name__}: {e}") from e
  devices = jax.devices("cpu")
  if len(devices) < topo.num_chips:
    raise RuntimeError(
        f"--topology={topo.name}: simulating {topo.num_chips} GPUs needs as many CPU devices, "
        f"have {len(devices)}; set XLA_FLAGS=--xla_force_host_platform_device_count="
        f"{topo.num_chips} before jax starts (`vft plan` does it when it imports jax first)")
  return devices[:topo.num_chips]


@dataclasses.dataclass(frozen=True)
class Layout:
  """Mesh sizes and remat policy ("none": no remat) of one candidate."""
  data: int
  fsdp: int
  tensor: int
  remat: str

  @property
  def mesh(self) -> dict:
    return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

  @property
  def label(self) -> str:
    return f"{self.data}x{self.fsdp}x{self.tensor}"


def parse_layouts(specs: Sequence[str], remats: Sequence[str], num_chips: int) -> list[Layout]:
  """"DxFxT" mesh specs (one size may be -1) x remat policies -> Layouts, specs outermost.
  Defaults: pure FSDP, then (n/8) data x 8 fsdp, each with dots_saveable then nothing_saveable
  (fastest first: less recompute, then fewer all-gathers)."""
  specs = list(specs) or ["1x-1x1"] + (["-1x8x1"] if num_chips > 8 else [])
  remats = list(remats) or ["dots_saveable", "nothing_saveable"]
  for r in remats:
    if r != "none" and r not in REMAT_POLICIES:
      raise ValueError(f"--plan_remat: {r!r} is not 'none' or one of {sorted(REMAT_POLICIES)}")
  out = []
  for spec in specs:
    try:
      sizes = [int(v) for v in spec.split("x")]
      if len(sizes) != 3:
        raise ValueError
    except ValueError:
      raise ValueError(f"--plan_layouts: {spec!r} is not DATAxFSDPxTENSOR, e.g. 1x-1x1") from None
    if sizes.count(-1) == 1:
      rest = int(np.prod([s for s in sizes if s != -1]))
      sizes[sizes.index(-1)] = num_chips // rest if num_chips % rest == 0 else 0
    if min(sizes) < 1 or int(np.prod(sizes)) != num_chips:
      raise ValueError(f"--plan_layouts: {spec!r} does not multiply to {num_chips} chips")
    out.extend(Layout(*sizes, remat=r) for r in remats)
  return list(dict.fromkeys(out))


def latent_shape(cfg) -> tuple[int, int, int, int]:
  """[T, h, w, C] of one clip's latents from config.data / codec / model."""
  t = 1 + (cfg.data.clip_len - 1) // int(cfg.codec.get("time_factor", 4))
  s = cfg.data.size // cfg.codec.spatial_factor
  return (t, s, s, cfg.model.latent_channels)


def block_matmul_params(dim: int) -> int:
  """Matmul parameters of one transformer block of width `dim` (q, k, v, out + SwiGLU)."""
  return 4 * dim * dim + 3 * dim * int(2 * int(4 * dim) / 3)


def model_flops(cfg, bs: int, spec, encoder_trainable: bool = True) -> float:
  """Analytic model FLOPs of one train step (forward + backward = 3x forward, no remat):
  2 FLOPs per matmul parameter per token plus 4*S*D per token per layer for attention
  (masked-out attention counted as done: dense kernels compute it). A frozen encoder
  (`encoder_trainable=False`) runs forward only."""
  m = cfg.model
  t = spec[0] // m.patch_size[0]
  hw = (spec[1] // m.patch_size[1]) * (spec[2] // m.patch_size[2])
  s = t * (hw + m.num_registers)
  layer = lambda d, n: 2 * n * block_matmul_params(d) + 4 * n * n * d  # noqa: E731
  enc = m.enc_depth * layer(m.enc_width, s)
  dec = m.dec_depth * layer(m.dec_width, s)
  if m.repa_layer is not None and cfg.train.repa_weight > 0:
    dec += m.repa_depth * layer(m.dec_width, t * hw)
  return bs * ((3 if encoder_trainable else 1) * enc + 3 * dec)


def leaf_bytes_per_device(x) -> int:
  """Bytes one device holds of a sharded ShapeDtypeStruct / jax.Array (its shard)."""
  shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
  return int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize


def tree_bytes_per_device(tree) -> int:
  return sum(leaf_bytes_per_device(x) for x in jax.tree_util.tree_leaves(tree))


def abstract_batch(cfg, mesh, rules, batch_size: int) -> dict:
  """The train batch as sharded ShapeDtypeStructs (bf16 latents, and REPA targets if used)."""
  spec = latent_shape(cfg)
  shard = sharding.batch_sharding(mesh, rules)
  batch = {"latents": jax.ShapeDtypeStruct((batch_size, *spec), jnp.bfloat16, sharding=shard)}
  m = cfg.model
  if m.repa_layer is not None and float(cfg.train.get("repa_weight", 0.0)) > 0:
    grid = (spec[0], spec[1] // m.patch_size[1], spec[2] // m.patch_size[2], m.repa_dim)
    batch["repa"] = jax.ShapeDtypeStruct((batch_size, *grid), jnp.bfloat16, sharding=shard)
  return batch


def with_layout(cfg, layout: Layout):
  """A copy of `cfg` with the layout's mesh and remat policy."""
  c = copy.deepcopy(cfg)
  c.unlock()
  c.mesh.update(layout.mesh)
  c.model.remat = layout.remat != "none"
  if layout.remat != "none":
    c.model.remat_policy = layout.remat
  return c


def lower_train_step(cfg, devices) -> tuple[Any, Any, dict]:
  """-> (lowered train step, abstract sharded TrainState, abstract batch) on a mesh of
  `devices` built from `cfg.mesh`; the same jit as `vft.train.loop.Trainer`."""
  mesh = sharding.make_mesh(cfg.mesh, devices)
  rules = sharding.rules_from_config(cfg.sharding_rules)
  model = VideoFlexTok(TokenizerConfig.from_config(cfg.model))
  tx = optim_lib.make_optimizer(cfg)
  use_ema = float(cfg.optim.get("ema_decay", 0.0)) > 0
  state = state_lib.abstract_state(model, tx, (1, *latent_shape(cfg)), use_ema, mesh, rules)
  batch = abstract_batch(cfg, mesh, rules, int(cfg.data.global_batch_size))
  shard = jax.tree_util.tree_map(lambda a: a.sharding, state)
  bsh = sharding.batch_sharding(mesh, rules)
  # sharding.jit traces under the rules, so `sharding.constrain` acts (batch-sharded
  # activations); without them XLA propagates the FSDP weight shardings and computes the whole
  # global batch on every chip.
  lowered = jit_train_step(model, tx, cfg, mesh, rules, shard).lower(state, batch)
  return lowered, state, batch


def _is_overflow(e: Exception) -> bool:
  msg = str(e)
  return "RESOURCE_EXHAUSTED" in msg or "exceeds the memory" in msg or "Ran out of memory" in msg


def plan_layout(cfg, topo: Topology, layout: Layout, devices, mfu: float = 0.4,
                headroom: float = 0.1, name: str = "") -> dict:
  """One row: per-chip bytes, FLOPs, step time and whether it fits `(1 - headroom) * HBM`."""
  c = with_layout(cfg, layout)
  gbs = int(c.data.global_batch_size)
  shards = layout.data * layout.fsdp
  accum = grad_accum_steps(c)
  row = dict(config=name, topology=topo.name, chip=topo.chip.name,
             chips=topo.num_chips, layout=layout.label, remat=layout.remat, global_batch=gbs,
             batch_per_chip=gbs / shards, grad_accum=accum, hbm_gib=topo.chip.hbm_bytes / GiB,
             headroom=headroom)
  if gbs % (shards * accum):
    return dict(row, status=f"global batch {gbs} not divisible by {shards} batch shards x "
                f"{accum} microbatches", fits=False)
  t0 = time.perf_counter()
  lowered, state, batch = lower_train_step(c, devices)
  row.update(params=tree_bytes_per_device(state.params),
             opt_state=tree_bytes_per_device(state.opt_state),
             ema=tree_bytes_per_device(state.ema_params), batch=tree_bytes_per_device(batch))
  pred = partition.trainable_predicate(c)
  enc_trainable = pred is None or bool(partition.select({"encoder": state.params["encoder"]},
                                                        pred))
  row["model_flops"] = model_flops(c, gbs, latent_shape(c), enc_trainable)
  row["step_s"] = row["model_flops"] / (topo.num_chips * topo.chip.peak_flops * mfu)
  row["mfu"] = mfu
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory is a result
    if not _is_overflow(e):
      raise
    need = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(e))
    if need:  # the compiler's own count of the temporaries it could not place
      row["temp"] = int(float(need.group(1)) * 1024**"KMGT".index(need.group(2)) * 1024)
    return dict(row, status="HBM overflow at compile", fits=False,
                compile_s=time.perf_counter() - t0)
  row["compile_s"] = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  row.update(argument=int(ma.argument_size_in_bytes), output=int(ma.output_size_in_bytes),
             alias=int(ma.alias_size_in_bytes), temp=int(ma.temp_size_in_bytes),
             code=int(ma.generated_code_size_in_bytes))
  row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"] + row["code"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row["xla_flops"] = float((cost or {}).get("flops", 0.0))
  row["fits"] = fits(row, topo.chip.hbm_bytes, headroom)
  row["status"] = "fits" if row["fits"] else "over HBM - headroom"
  return row


def fits(row: dict, hbm_bytes: float, headroom: float = 0.1) -> bool:
  """Whether a compiled row's peak bytes stay within `(1 - headroom) * hbm_bytes`."""
  return "peak" in row and row["peak"] <= (1.0 - headroom) * hbm_bytes


def choose(rows: Sequence[dict], hbm_bytes: float, headroom: float = 0.1) -> dict | None:
  """The first row (candidates are ordered fastest first) that fits, or None."""
  return next((r for r in rows if fits(r, hbm_bytes, headroom)), None)


def plan(cfg, topo: Topology, layouts: Sequence[Layout], mfu: float = 0.4,
         headroom: float = 0.1, devices=None, stop_at_fit: bool = True, name: str = "",
         log=print) -> tuple[list[dict], dict | None]:
  """Compiles the candidates in order -> (rows, the first row that fits or None)."""
  devices = topology_devices(topo) if devices is None else devices
  rows, chosen = [], None
  for layout in layouts:
    row = plan_layout(cfg, topo, layout, devices, mfu, headroom, name)
    rows.append(row)
    log(format_row(row))
    if row["fits"] and chosen is None:
      chosen = row
      if stop_at_fit:
        break
  return rows, chosen


TABLE_HEADER = (
    "| config | topology (chips) | layout DxFxT | remat | batch/chip | params | opt state | EMA "
    "| batch | temp | peak | HBM | model TFLOP/step | XLA TFLOP/chip | step s @MFU | compile s "
    "| result |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _gib(row, key) -> str:
  return f"{row[key] / GiB:.2f}" if key in row else "-"


def format_row(row: dict) -> str:
  """One markdown table row (bytes in GiB per chip)."""
  flops = f"{row['model_flops'] / 1e12:.1f}" if "model_flops" in row else "-"
  xla = f"{row['xla_flops'] / 1e12:.1f}" if "xla_flops" in row else "-"
  step = f"{row['step_s']:.2f} @{row['mfu']:.0%}" if "step_s" in row else "-"
  comp = f"{row['compile_s']:.0f}" if "compile_s" in row else "-"
  per_chip = f"{row['batch_per_chip']:g}"
  if row.get("grad_accum", 1) > 1:  # microbatches x rows per chip per microbatch
    per_chip += f" ({row['grad_accum']}x{row['batch_per_chip'] / row['grad_accum']:g})"
  return (f"| {row['config']} | {row['topology']} ({row['chips']}) | {row['layout']} | "
          f"{row['remat']} | {per_chip} | {_gib(row, 'params')} | "
          f"{_gib(row, 'opt_state')} | {_gib(row, 'ema')} | {_gib(row, 'batch')} | "
          f"{_gib(row, 'temp')} | {_gib(row, 'peak')} | {row['hbm_gib']:.0f} | {flops} | {xla} | "
          f"{step} | {comp} | {row['status']} |")
