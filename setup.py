"""vft: VideoFlexTok in JAX/Flax."""
import setuptools

setuptools.setup(
    name="vft",
    version="0.1.0",
    description="VideoFlexTok (flexible-length coarse-to-fine video tokenizer) in JAX/Flax",
    packages=setuptools.find_packages(include=["vft", "vft.*"]),
    package_data={"vft.data": ["demo_clips/*.mp4", "demo_clips/*.md"]},
    python_requires=">=3.11",
    entry_points={"console_scripts": ["vft=vft.main:run"]},
)
