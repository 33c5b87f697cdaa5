#!/usr/bin/python3
"""A small distributed training job that survives being stopped: torch.distributed (gloo on
CPU, NCCL on GPUs, from PODSYS_DIST_BACKEND), a checkpoint every --checkpoint-every steps to
shared storage (written to a temporary name, then renamed: a crash never leaves a torn file),
and on start the newest checkpoint is loaded, so a requeued job continues where it stopped.

When the request file (--stop-file, $PODSYS_STOP_FILE: train.sbatch creates it on the signal
before the time limit) appears, every rank stops after the current step, rank 0 checkpoints it
and acknowledges by renaming the file to NAME.done; the job is then requeued and resumes.

Launched by torchrun (see train.sbatch). Logs `step N loss L` from rank 0; the last line is
`done steps=N first_loss=A final_loss=B resumed_from=S`, or `checkpoint on request at step N`.
With the models layer, rank 0 also logs parameters, the loss and the final model to MLflow
(run_tracking.py)."""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

from run_tracking import Tracker

CHECKPOINT_RE = re.compile(r"^step-(\d{8})\.pt$")


def newest_checkpoint(directory: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in directory.glob("step-*.pt") if (m := CHECKPOINT_RE.match(p.name)))
    return found[-1][1] if found else None


def save_checkpoint(directory: Path, step: int, state: dict) -> Path:
    target = directory / f"step-{step:08d}.pt"
    tmp = directory / f".step-{step:08d}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, target)
    for old in sorted(directory.glob("step-*.pt"))[:-3]:  # keep the newest three
        old.unlink(missing_ok=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="pause per step (to watch it run)")
    parser.add_argument("--stop-file", type=Path, default=os.environ.get("PODSYS_STOP_FILE") or None,
                        help="checkpoint and stop when this file appears (default: $PODSYS_STOP_FILE)")
    parser.add_argument("--model-name", default=os.environ.get("PODSYS_MODEL_NAME", "train_ddp"),
                        help="registered model name for the final model (models layer)")
    args = parser.parse_args()

    backend = os.environ.get("PODSYS_DIST_BACKEND", "gloo")
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if backend == "nccl" else torch.device("cpu")
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    # A fixed regression problem: y = X w* + noise; every rank draws its own shard.
    torch.manual_seed(1234)
    true_w = torch.randn(32, 1)
    generator = torch.Generator().manual_seed(100 + rank)
    model = torch.nn.Linear(32, 1).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.05)

    start, first_loss = 0, None
    latest = newest_checkpoint(args.checkpoint_dir)
    if latest is not None:
        state = torch.load(latest, map_location="cpu")
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start, first_loss = state["step"], state["first_loss"]
        if rank == 0:
            print(f"resumed from {latest.name} at step {start}", flush=True)
    resumed_from = start
    tracker = None
    if rank == 0:
        job = f"{os.environ.get('SLURM_JOB_NAME', 'train')}-{os.environ.get('SLURM_JOB_ID', 'local')}"
        tracker = Tracker(args.checkpoint_dir, job, {"steps": args.steps, "checkpoint_every": args.checkpoint_every,
                                                     "world_size": world, "backend": backend})

    loss_value = float("nan")
    for step in range(start + 1, args.steps + 1):
        x = torch.randn(64, 32, generator=generator)
        y = x @ true_w + 0.01 * torch.randn(64, 1, generator=generator)
        loss = torch.nn.functional.mse_loss(ddp(x.to(device)), y.to(device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        # Rank 0's view of the stop request rides on the loss reduction: every rank sees the same
        # sum, so all stop after the same step (a rank that stopped alone would hang the others).
        asked = float(rank == 0 and args.stop_file is not None and args.stop_file.exists())
        reduced = torch.stack([loss.detach().reshape(()), torch.tensor(asked, device=device)])
        dist.all_reduce(reduced)
        loss_value, stop = reduced[0].item() / world, reduced[1].item() > 0
        if first_loss is None:
            first_loss = loss_value
        if rank == 0:
            print(f"step {step} loss {loss_value:.6f}", flush=True)
            if step % args.checkpoint_every == 0 or step == args.steps or stop:
                tracker.metrics(step, {"loss": loss_value})
                save_checkpoint(args.checkpoint_dir, step, {"step": step, "first_loss": first_loss,
                                                            "model": model.state_dict(),
                                                            "optimiser": optimiser.state_dict()})
        if stop:
            dist.barrier()
            if rank == 0:
                os.replace(args.stop_file, f"{args.stop_file}.done")
                print(f"checkpoint on request at step {step}: stopping for the requeue", flush=True)
            dist.destroy_process_group()
            return
        if args.step_seconds:
            time.sleep(args.step_seconds)
    dist.barrier()
    if rank == 0:
        print(f"done steps={args.steps} first_loss={first_loss:.6f} final_loss={loss_value:.6f} "
              f"resumed_from={resumed_from}", flush=True)
        final = args.checkpoint_dir / "model.pt"
        torch.save(model.state_dict(), final)
        tracker.metrics(args.steps, {"first_loss": first_loss, "final_loss": loss_value})
        tracker.finish(final, args.model_name)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
