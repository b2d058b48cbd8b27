"""`vft plan --config=configs/x.py --topology=v5p-256`: the memory and compile plan
(`vft.plan`) of the config's train step on a target topology, as a markdown table.

  vft plan --config=configs/tokenizer_d18_d28.py --topology=v5p-256 \\
      [--plan_layouts=1x-1x1,-1x8x1] [--plan_remat=dots_saveable,nothing_saveable] \\
      [--mfu=0.4] [--headroom=0.1] [--plan_all] [--plan_json=rows.json] \\
      [--config.data.global_batch_size=1024]

TPU topologies need libtpu (`make plan` builds .venv-tpu); h100-N compiles on N simulated CPU
devices. Flags are defined here (imported by vft/main.py before parsing); heavy imports stay
inside the functions.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

_TOPOLOGY = flags.DEFINE_string("topology", None, "plan: v5p-N (TensorCores), v5e-N, "
                                "SxV5E-N (S slices), h100-N.")
_LAYOUTS = flags.DEFINE_list("plan_layouts", [], "plan: candidate meshes DATAxFSDPxTENSOR "
                             "(one -1), fastest first (default 1x-1x1,-1x8x1).")
_REMAT = flags.DEFINE_list("plan_remat", [], "plan: remat policies per mesh, fastest first "
                           "(default dots_saveable,nothing_saveable; 'none' = no remat).")
_MFU = flags.DEFINE_float("mfu", 0.4, "plan: model-FLOPs utilisation of the step-time estimate.")
_HEADROOM = flags.DEFINE_float("headroom", 0.1, "plan: HBM share kept free when choosing.")
_ALL = flags.DEFINE_bool("plan_all", False, "plan: compile every candidate, not only up to the "
                         "first that fits.")
_JSON = flags.DEFINE_string("plan_json", None, "plan: also write the rows as JSON here.")


def plan_main(config) -> None:
  if config is None or not _TOPOLOGY.value:
    raise app.UsageError("vft plan needs --config and --topology, e.g. "
                         "--config=configs/tokenizer_d18_d28.py --topology=v5p-256")
  if not 0.0 < _MFU.value <= 1.0 or not 0.0 <= _HEADROOM.value < 1.0:
    raise app.UsageError(f"--mfu must be in (0, 1] and --headroom in [0, 1), got "
                         f"{_MFU.value} and {_HEADROOM.value}")
  from vft import plan as plan_lib
  topo = plan_lib.parse_topology(_TOPOLOGY.value)
  if topo.tpu is None:  # read when the CPU backend starts, i.e. on first use below
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={topo.num_chips}")
  layouts = plan_lib.parse_layouts(_LAYOUTS.value, _REMAT.value, topo.num_chips)
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.basename(path).removesuffix(".py")
  print(f"# vft plan {name} on {topo.name}: {topo.num_chips} x {topo.chip.name} "
        f"({topo.chip.peak_flops / 1e12:.0f} TFLOP/s bf16, {topo.chip.hbm_bytes / 2**30:.0f} GiB; "
        f"{topo.chip.source}); fit = peak <= {1 - _HEADROOM.value:.0%} of HBM")
  print(plan_lib.TABLE_HEADER, flush=True)
  rows, chosen = plan_lib.plan(config, topo, layouts, mfu=_MFU.value, headroom=_HEADROOM.value,
                               stop_at_fit=not _ALL.value, name=name,
                               log=lambda s: print(s, flush=True))
  if chosen is None:
    print(f"# no candidate fits {topo.name}; try more chips, --plan_remat=nothing_saveable or a "
          "smaller --config.data.global_batch_size")
  else:
    print(f"# chosen: mesh {chosen['layout']} (data x fsdp x tensor), remat {chosen['remat']}, "
          f"{chosen['peak'] / 2**30:.1f} GiB of {chosen['hbm_gib']:.0f} GiB per chip, "
          f"~{chosen['step_s']:.2f} s/step at {chosen['mfu']:.0%} MFU")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"rows": rows, "chosen": chosen}, f, indent=1)
