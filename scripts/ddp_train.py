#!/usr/bin/env python
"""Train with PyTorch DDP on a blob that a collector keeps appending to (docs/ddp.md).

    python scripts/ddp_train.py collect rollouts.blob --seconds 60 &
    torchrun --standalone --nproc_per_node 2 scripts/ddp_train.py train rollouts.blob

Runs on CPU with the gloo backend. Kill the training at any time and start
it again: it resumes from its checkpoint with exactly the batches it had
not trained on yet.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tensorblob import TensorBlob
from tensorblob.data import BlobLoader, DistributedBlobSampler, shared_snapshot

DIM = 16  # features per row; one more column holds the target


def collect(path: str, seconds: float) -> None:
    """The collector: one transaction of 64 rows (features, target) every 10 ms."""
    w = torch.randn(DIM, generator=torch.Generator().manual_seed(0))
    with TensorBlob.open(path, "a", dtype="float32", shape=DIM + 1, block_size=1024) as blob:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            x = torch.randn(64, DIM)
            y = x @ w + 0.1 * torch.randn(64)
            blob.write(torch.cat([x, y[:, None]], dim=1))
            time.sleep(0.01)


def save(checkpoint: str, state: dict) -> None:
    torch.save(state, checkpoint + ".tmp")
    os.replace(checkpoint + ".tmp", checkpoint)  # a kill never leaves half a checkpoint


def train(path: str, epochs: int, checkpoint: str, workers: int) -> None:
    dist.init_process_group("gloo")  # torchrun sets the rank, world size and rendezvous
    rank = dist.get_rank()

    # Every rank reads rank 0's snapshot, each with a lease of its own.
    blob = TensorBlob.open(path, "r") if rank == 0 else None
    data = shared_snapshot(blob, src=0)
    if blob is not None:
        blob.close()

    sampler = DistributedBlobSampler(data, batch_size=32, seed=0, window_blocks=4)
    loader = BlobLoader(  # counts the batches that reach this loop, for the checkpoint
        data,
        batch_sampler=sampler,
        num_workers=workers,
        multiprocessing_context="spawn" if workers else None,
    )
    model = DistributedDataParallel(torch.nn.Linear(DIM, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    start = 0
    if os.path.exists(checkpoint):  # every rank loads the one checkpoint rank 0 saved
        ckpt = torch.load(checkpoint, weights_only=True)
        model.module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sampler.load_state_dict(ckpt["sampler"])
        start = ckpt["sampler"]["epoch"]

    for epoch in range(start, epochs):
        if epoch != start:
            data.refresh()  # collective: every rank moves to rank 0's newest snapshot
        sampler.set_epoch(epoch)
        loss = torch.zeros(())
        for step, batch in enumerate(loader):
            x, y = batch[:, :DIM], batch[:, DIM]
            loss = F.mse_loss(model(x).squeeze(1), y)
            opt.zero_grad()
            loss.backward()  # DDP averages the gradients over the ranks
            opt.step()
            if rank == 0 and step % 20 == 0:
                state = {"model": model.module.state_dict(), "opt": opt.state_dict()}
                save(checkpoint, {**state, "sampler": sampler.state_dict()})
        if rank == 0:
            rows = sampler.state_dict()["length"]  # the epoch's snapshot, pinned at its start
            print(f"epoch {epoch}: {rows} rows, {len(sampler)} steps, loss {loss.item():.4f}")

    if rank == 0:
        state = sampler.state_dict()
        save(checkpoint, {"model": model.module.state_dict(), "opt": opt.state_dict(),
                          "sampler": state})  # fmt: skip
        print(f"{checkpoint}: resumable at position {state['position']} of epoch {state['epoch']}")
    data.close()
    dist.barrier()  # every rank is done before any tears its process group down
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="append rows for a while")
    c.add_argument("path")
    c.add_argument("--seconds", type=float, default=60)
    t = sub.add_parser("train", help="train under torchrun")
    t.add_argument("path")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--checkpoint", help="default: PATH.ckpt")
    t.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank")
    args = ap.parse_args()
    if args.command == "collect":
        collect(args.path, args.seconds)
    else:
        train(args.path, args.epochs, args.checkpoint or args.path + ".ckpt", args.workers)


if __name__ == "__main__":
    main()
