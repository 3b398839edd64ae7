"""The tiny training world the training tests share: lossless synthetic samples and a tiny model folder."""
from pathlib import Path

from train.synthetic import write_dataset
from train.tiny_models import write_model_folder


def write_world(root: Path, **datasets: tuple[int, int]) -> Path:
    """root/<name>: (samples, max foregrounds) 32x32x5 synthetic samples per dataset, seeded 1, 2 ...; root/model."""
    for seed, (name, (samples, max_foregrounds)) in enumerate(datasets.items(), start=1):
        write_dataset(root / name, samples=samples, seed=seed, frames=5, height=32, width=32,
                      max_foregrounds=max_foregrounds, split="train", lossless=True, jsonl=False, fps=16)
    write_model_folder(root / "model", seed=0, num_foregrounds=1)
    return root
