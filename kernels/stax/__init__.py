"""Layers and combinators with neural-tangents' names: each returns ``(init_fn, apply_fn, kernel_fn)``."""
from kernels.stax.attention import GlobalSelfAttention
from kernels.stax.combinators import FanInConcat, FanInProd, FanInSum, FanOut, parallel, repeat, serial
from kernels.stax.conv_more import ConvLocal, ConvTranspose
from kernels.stax.custom import Bool, Diagonal, MaskedArray, layer, requires, supports_masking, unmask_fn
from kernels.stax.elementwise import (ABRelu, Abs, Cos, Elementwise, ElementwiseNumerical, Erf, Exp, Gaussian,
                                      Gelu, Hermite, LeakyRelu, Monomial, Polynomial, RectifiedMonomial, Rbf,
                                      Relu, Sigmoid_like, Sign, Sin)
from kernels.stax.extra import (AggregateImplementation, AttentionMechanism, Dropout, ExpNormalized, Gabor,
                                ImageResize, Index, Padding, PositionalEmbedding, Slice)
from kernels.stax.graph import Aggregate, DotGeneral
from kernels.stax.layer import KernelFn, Layer
from kernels.stax.linear import (AvgPool, Conv, Dense, Flatten, GlobalAvgPool, GlobalSumPool, Identity,
                                 LayerNorm, SumPool)

__all__ = [
    "ABRelu", "Abs", "AvgPool", "Conv", "Cos", "Dense", "Elementwise", "ElementwiseNumerical",
    "Erf", "Exp", "FanInConcat", "FanInProd", "FanInSum", "FanOut", "Flatten", "Gaussian", "Gelu",
    "GlobalAvgPool", "GlobalSelfAttention", "GlobalSumPool", "Hermite", "Identity", "KernelFn",
    "Layer", "LayerNorm", "LeakyRelu", "Monomial", "Polynomial", "Rbf", "RectifiedMonomial", "Relu",
    "Sigmoid_like", "Sign", "Sin", "SumPool", "parallel", "repeat", "serial",
    # neural-tangents 0.6.5 names added later (kernels/stax/extra.py)
    "AggregateImplementation", "AttentionMechanism", "Dropout", "ExpNormalized", "Gabor", "ImageResize",
    "Index", "Padding", "PositionalEmbedding", "Slice",
    "Aggregate", "DotGeneral",  # kernels/stax/graph.py
    "ConvLocal", "ConvTranspose",  # kernels/stax/conv_more.py
    "Bool", "Diagonal", "MaskedArray", "layer", "requires", "supports_masking", "unmask_fn",  # custom.py
]
