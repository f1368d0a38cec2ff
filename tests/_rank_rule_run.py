"""Run by tests/test_callbacks.py in a subprocess: 2 gloo CPU ranks under DDP with the SampleVideos and RewardProbe
callbacks on a module whose sampling and probe are collectives (as forwards of FSDP-sharded weights are) and whose
validation data live on rank 0 only. argv: OUT_DIR."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist

from ardrag.training.callbacks import RewardProbe, SampleVideos


class CollectiveModule(pl.LightningModule):
    """Each call of sample_videos / probe_rewards all-reduces (a rank that skipped it would hang the others) and
    appends a line to `<out>/calls_rank<r>.txt`."""

    def __init__(self, out: Path):
        super().__init__()
        self.out = out
        self.layer = torch.nn.Linear(2, 1)

    def _collective(self, what: str) -> float:
        x = torch.ones(())
        dist.all_reduce(x)
        with open(self.out / f"calls_rank{self.global_rank}.txt", "a") as f:
            f.write(f"{what} {self.global_step}\n")
        return float(x)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample_videos(self, batch):
        n = self._collective("sample")
        return np.full((len(batch["prompt"]), 3, 8, 8, 3), int(n), np.uint8)

    def probe_rewards(self, batch, seeds):
        return {"motion": self._collective("probe") + len(batch["prompt"])}


class RankZeroValData(pl.LightningDataModule):
    """Training batches on every rank; validation conditions on rank 0 only (as with fewer val shards than ranks)."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)

    def val_dataloader(self):
        if self.trainer.global_rank != 0:
            return []
        b = {
            "prompt": ["a", "b"],
            "tracks": torch.zeros(2, 3, 1, 2),
            "visible": torch.ones(2, 3, 1, dtype=bool),
        }
        return [b]


def main(out: Path) -> None:
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=4,
        logger=pl.loggers.TensorBoardLogger(str(out), name="tb", version=""),
        callbacks=[
            SampleVideos(every_n_steps=2, num_videos=2, scale=1),
            RewardProbe(every_n_steps=2, seeds=(0,)),
        ],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(CollectiveModule(out), datamodule=RankZeroValData())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
