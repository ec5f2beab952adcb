"""Two nodes emulated on one host: one `torchrun --nnodes 2 --node_rank R` launch of train.py per node
(trainer.num_nodes=2, one CPU process each, gloo) with the int8 comm hook. Each node is given its own default
run folder (as two machines' Hydra timestamps can differ); the run must end up in rank 0's alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch

from fusion.distributed.strategy import CHECKPOINT_KEY
from fusion.runtime.checkpoints import load_checkpoint_file
from tests.helpers.recipes import REPO
from tests.helpers.spawn import free_port

NODES, DEVICES, EPOCHS, BATCH = 2, 1, 2, 16
TRAIN_ROWS = 48  # tiny_digits
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "TORCHELASTIC_RUN_ID")


def launch_node(node_rank: int, port: int, manifest, default_run_dir) -> subprocess.Popen:
    """`torchrun` (python -m torch.distributed.run) of train.py for one node, in its own process group."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", f"--nproc_per_node={DEVICES}",
               f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
               "train.py", "recipe=progressive", "trainer.strategy=ddp", "trainer.accelerator=cpu",
               f"trainer.devices={DEVICES}", f"trainer.num_nodes={NODES}", "comm_hook=int8",
               f"data.manifest={manifest}", f"data.batch_size={BATCH}", f"trainer.max_epochs={EPOCHS}",
               "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "++ddp_timeout_s=60",
               "data.num_workers=0",  # the run folder is under test, not the loader: no worker processes per rank
               f"hydra.run.dir={default_run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES} | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(nodes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every node's output; kills every process of every node if one is not done within `timeout` seconds."""
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for node in nodes:
            try:
                os.killpg(node.pid, signal.SIGKILL)  # the launcher and its worker, if still alive
            except ProcessLookupError:
                pass
            node.wait()
    return outputs


def printed_metrics(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("test metrics: "))
    return json.loads(line.removeprefix("test metrics: "))


def test_two_torchrun_nodes_share_one_run_folder(tiny_digits, tmp_path):
    defaults = [tmp_path / f"node{rank}_default" for rank in range(NODES)]
    port = free_port()
    outputs = finish([launch_node(rank, port, tiny_digits, defaults[rank]) for rank in range(NODES)], timeout=150)
    for rank, node_output in enumerate(outputs):
        assert "test metrics: " in node_output, f"node {rank}:\n{node_output[-4000:]}"
        # global rank = node_rank * devices + local_rank
        assert f"GLOBAL_RANK: {rank * DEVICES}, MEMBER: {rank * DEVICES + 1}/{NODES * DEVICES}" in node_output
        assert f"run folder: {defaults[0]}\n" in node_output  # both nodes use rank 0's folder

    run = defaults[0]
    assert not defaults[1].exists()  # node 1's own default folder: its job log moved to rank 0's folder
    assert len(list(run.glob("train.*-*.log"))) == 1
    assert {"config.yaml", "metrics.json", "best.ckpt", "last.ckpt", "logs"} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["hparams.yaml", "metrics.csv"]  # one logger
    assert not list(run.rglob("*.tmp"))
    config = (run / "config.yaml").read_text()
    assert f"run_dir: {run}\n" in config and "num_nodes: 2\n" in config and "comm_hook:\n  name: int8\n" in config

    # rank 0 wrote metrics.json; loss, decision accuracies and gate weights are reduced over both ranks' test
    # shards, so both nodes report the same numbers
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == printed_metrics(outputs[0])
    other = printed_metrics(outputs[1])
    assert {k: v for k, v in other.items() if k != "fit_seconds"} == {
        k: v for k, v in metrics.items() if k != "fit_seconds"}
    assert {"test/loss", "test/decision_acc/image", "test/gate/decision/audio"} <= set(metrics)

    steps_per_epoch = -(-TRAIN_ROWS // (NODES * DEVICES) // BATCH)  # 24 rows per rank, batches of 16: 2
    last = load_checkpoint_file(run / "last.ckpt")
    assert last["global_step"] == EPOCHS * steps_per_epoch == 4
    assert metrics["comm/steps"] == last["global_step"]
    assert 3.5 < metrics["comm/compression"] < 4.0  # int8 instead of fp32, plus the scales

    saved = last[CHECKPOINT_KEY]
    assert saved["name"] == "int8" and saved["world_size"] == NODES * DEVICES and len(saved["ranks"]) == 2
    for state in saved["ranks"]:
        assert state["step"] == last["global_step"] and state["counter"]["steps"] == last["global_step"]
        assert state["residuals"]
    residuals = [state["residuals"] for state in saved["ranks"]]
    first = next(iter(residuals[0]))
    assert not torch.equal(residuals[0][first], residuals[1][first])  # each rank's own error feedback
