"""fusion: multimodal fusion models (early, late, progressive), alignment, sync and compressed DDP.

`fusion.fit(...)` and `fusion.load(...)` (fusion/api.py) are imported on first use, so `import fusion` stays
free of heavy imports and side effects.
"""

__all__ = ["fit", "load"]


def __getattr__(name: str):
    if name in __all__:
        from fusion import api

        return getattr(api, name)
    raise AttributeError(f"module 'fusion' has no attribute {name!r}")
