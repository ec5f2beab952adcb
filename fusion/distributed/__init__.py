"""Compressed-gradient DDP communication hooks and the Lightning strategy that trains through them.

``comm_hook=none|fp16|bf16|int8|topk|powersgd`` (plus ``allreduce``: uncompressed, through the hook path) with
``trainer.strategy=ddp``, options under ``comm_hook.*`` (the Hydra group recipes/comm_hook/);
:func:`fusion.distributed.strategy.build_strategy` turns the config into the Trainer's strategy, :func:`fusion.distributed.registry.make_comm_hook` gives (state, hook) for plain DDP.
"""
