"""vft: VideoFlexTok in JAX/Flax."""
import os

import setuptools


def accelerator_requirements(name: str) -> list[str]:
  """Pins of requirements-<name>.txt (`pip install -e .[tpu]` / `.[cuda]`), minus its `-r`."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"requirements-{name}.txt")
  with open(path) as f:
    lines = (line.split("#", 1)[0].strip() for line in f)
    return [line for line in lines if line and not line.startswith("-r")]


setuptools.setup(
    name="vft",
    version="0.1.0",
    description="VideoFlexTok (flexible-length coarse-to-fine video tokenizer) in JAX/Flax",
    packages=setuptools.find_packages(include=["vft", "vft.*"]),
    package_data={"vft.data": ["demo_clips/*.mp4", "demo_clips/*.md"],
                  "vft.eval": ["kinetics400_labels.txt"]},
    python_requires=">=3.11",
    extras_require={accel: accelerator_requirements(accel) for accel in ("tpu", "cuda")},
    entry_points={"console_scripts": ["vft=vft.main:run"]},
)
