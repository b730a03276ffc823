# Type stubs of the package: the extension's names (see _core.pyi) and train().
import os
from typing import Callable, Optional, Sequence, Union

from ._core import (
    Cancelled as Cancelled,
    Completion as Completion,
    Error as Error,
    Model as Model,
    ModelConfig as ModelConfig,
    Perplexity as Perplexity,
    Sampler as Sampler,
    Session as Session,
    State as State,
    Stream as Stream,
    TextDecoder as TextDecoder,
    Tokenizer as Tokenizer,
    TrainStep as TrainStep,
    TrainSummary as TrainSummary,
    bf16_products as bf16_products,
    build_info as build_info,
    cuda_available as cuda_available,
    init as init,
    memory_limit as memory_limit,
    quantize as quantize,
    set_bf16_products as set_bf16_products,
    set_memory_limit as set_memory_limit,
    set_threads as set_threads,
    threads as threads,
)

__version__: str

_Paths = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

def train(data: Optional[_Paths] = None, out: Union[None, str, os.PathLike] = None, *,
          tokens: Optional[_Paths] = None, fixed_batch: Union[str, os.PathLike] = ..., on_step: Optional[Callable[[TrainStep], Optional[bool]]] = None,
          val_every: int = ..., init_from: Union[str, os.PathLike] = ..., resume: Union[str, os.PathLike] = ...,
          preset: str = ..., d_model: int = ..., n_layer: int = ..., d_state: int = ..., d_conv: int = ...,
          expand: int = ..., dt_rank: int = ..., batch: int = ..., seq_len: int = ..., accum: int = ...,
          steps: int = ..., warmup: int = ..., lr: float = ..., lr_min: float = ..., schedule: str = ...,
          weight_decay: float = ..., clip: float = ..., beta1: float = ..., beta2: float = ...,
          adam_eps: float = ..., seed: int = ..., sequential: bool = ..., scan_chunk: int = ..., recompute: int = ..., eval_every: int = ...,
          eval_batches: int = ..., save_every: int = ..., keep: int = ...,
          dump_grads: Union[str, os.PathLike] = ..., device: str = ..., dtype: str = ...) -> TrainSummary: ...
