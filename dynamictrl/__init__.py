"""DynamiCtrl Studio: pose-guided human image animation (DynamiCtrl on CogVideoX-1.5).

Heavy modules load on first use, so `import dynamictrl` and the CLI's --help stay fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "DynamiCtrlPipeline": ".pipeline",
    "DynamiCtrlTransformerModel": ".models.transformer",
    "PoseAdaptiveLayerNorm": ".models.padaln",
    "Studio": ".studio",
    "GenerateSettings": ".settings",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'dynamictrl' has no attribute {name!r}")
