from .padaln import PoseAdaptiveLayerNorm
from .transformer import DynamiCtrlBlock, DynamiCtrlTransformerModel

__all__ = ["DynamiCtrlBlock", "DynamiCtrlTransformerModel", "PoseAdaptiveLayerNorm"]
