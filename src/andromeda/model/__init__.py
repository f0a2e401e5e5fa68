"""The Andromeda model. Never imports bench/, diagnostics/ or report/."""

from andromeda.model.cache import KVCache
from andromeda.model.checkpoint import load_checkpoint, save_checkpoint
from andromeda.model.config import PRESETS, ModelConfig, from_name
from andromeda.model.decode import GraphedDecoder, StaticStep
from andromeda.model.embedding import EmbeddingProvider, TokenEmbedding
from andromeda.model.tokenizer import ByteTokenizer, HFTokenizer
from andromeda.model.transformer import Andromeda, lm_loss

__all__ = [
    "Andromeda", "ModelConfig", "PRESETS", "from_name", "KVCache", "EmbeddingProvider", "TokenEmbedding",
    "ByteTokenizer", "HFTokenizer", "lm_loss", "save_checkpoint", "load_checkpoint", "GraphedDecoder", "StaticStep",
]
