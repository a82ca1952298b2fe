"""Which torch operations a width passes through, and how.

Each table entry is a category the analysis knows how to propagate layouts through.  Anything not
listed here is *unknown*: if a width-carrying tensor reaches it, every width involved is frozen
with a reason naming the op.  Nothing is ever guessed to be element-wise (Torch-Pruning's silent
default is the source of most of its wrong groups).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn


def existing_attrs(owner, names: str) -> set:
    return {getattr(owner, n) for n in names.split() if hasattr(owner, n)}


# Element-wise ops (any arity, NumPy broadcasting): one output position per input position.
_UNARY_MATH = (
    "abs neg exp exp2 expm1 log log1p log2 log10 sqrt rsqrt sigmoid tanh relu sin cos tan erf erfc "
    "sign sgn floor ceil round trunc frac reciprocal square clamp clip clamp_min clamp_max "
    "nan_to_num logical_not bitwise_not isnan isinf isfinite positive"
)
_BINARY_MATH = (
    "add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow "
    "maximum minimum fmax fmin where lerp addcmul addcdiv masked_fill logical_and logical_or "
    "logical_xor eq ne lt le gt ge atan2 hypot copysign xlogy"
)
_F_ACTIVATIONS = (
    "relu relu6 gelu silu mish hardswish hardsigmoid hardtanh leaky_relu elu selu celu softplus "
    "softsign tanhshrink softshrink hardshrink sigmoid tanh logsigmoid threshold rrelu dropout "
    "dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout relu_ elu_ leaky_relu_ "
    "hardtanh_ threshold_"
)
ELEMENTWISE_FUNCTIONS: set = (
    existing_attrs(torch, _UNARY_MATH + " " + _BINARY_MATH + " relu_ sigmoid_ tanh_ dropout")
    | existing_attrs(F, _F_ACTIVATIONS)
    | existing_attrs(
        operator,
        "add sub mul truediv floordiv mod pow neg pos abs iadd isub imul itruediv ifloordiv "
        "and_ or_ xor invert eq ne lt le gt ge",
    )
)

# Element-wise functions hidden from fx with ``torch.fx.wrap``, matched by qualified name.
ELEMENTWISE_FUNCTION_NAMES: set[str] = {
    "archgrow.models.activations.modified_relu",
}

# Functions that libraries hide from fx with ``torch.fx.wrap`` and that only scale each sample:
# matched by qualified name so the core needs none of those libraries installed.
PER_SAMPLE_FUNCTION_NAMES: set[str] = {
    "torchvision.ops.stochastic_depth.stochastic_depth",
}

# Same shape as their (first) tensor argument: layouts are copied from it.
LIKE_FUNCTIONS: set = existing_attrs(
    torch, "zeros_like ones_like empty_like full_like rand_like randn_like randint_like clone detach"
)

ELEMENTWISE_METHODS: set[str] = (
    set(_UNARY_MATH.split())
    | set(_BINARY_MATH.split())
    | {
        "relu6",
        "gelu",
        "silu",
        "hardswish",
        "hardsigmoid",
        "softplus",
        "leaky_relu",
        "elu",
        "bernoulli",
        "zero",
        "fill",
        "uniform",
        "normal",
        "copy",
    }
)
# Methods returning a tensor of the receiver's shape whatever the other arguments are.
RECEIVER_SHAPE_METHODS: set[str] = {
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "cpu",
    "cuda",
    "requires_grad_",
    "zero_",
    "fill_",
    "bernoulli_",
    "uniform_",
    "normal_",
    "copy_",
    "div_",
    "masked_fill_",
    "clamp_",
    "relu_",
    "sigmoid_",
    "tanh_",
    "exp_",
    "sqrt_",
    "pin_memory",
    "share_memory_",
    "float_power",
}

REDUCTIONS_FUNCTIONS: set = existing_attrs(
    torch, "mean sum amax amin prod std var norm logsumexp all any nansum nanmean count_nonzero"
)
REDUCTION_METHODS: set[str] = {
    "mean",
    "sum",
    "amax",
    "amin",
    "prod",
    "std",
    "var",
    "norm",
    "logsumexp",
    "all",
    "any",
    "nansum",
    "nanmean",
    "count_nonzero",
}
MINMAX = existing_attrs(torch, "max min")  # reductions with a dim, element-wise with a tensor

# Ops that normalise along one dim: structure is kept, but a new channel changes the others.
SOFTMAX_FUNCTIONS: set = existing_attrs(torch, "softmax log_softmax") | existing_attrs(F, "softmax log_softmax softmin normalize")
SOFTMAX_METHODS: set[str] = {"softmax", "log_softmax"}

CREATION_FUNCTIONS: set = existing_attrs(torch, "zeros ones empty full rand randn randint")

CAT_FUNCTIONS: set = existing_attrs(torch, "cat concat concatenate")
STACK_FUNCTIONS: set = existing_attrs(torch, "stack")
SPLIT_FUNCTIONS: set = existing_attrs(torch, "split chunk tensor_split unbind split_with_sizes")
SPLIT_METHODS: set[str] = {"split", "chunk", "tensor_split", "unbind", "split_with_sizes"}
NARROW_FUNCTIONS: set = existing_attrs(torch, "narrow select index_select")
NARROW_METHODS: set[str] = {"narrow", "select", "index_select"}

RESHAPE_FUNCTIONS: set = existing_attrs(torch, "reshape")
FLATTEN_FUNCTIONS: set = existing_attrs(torch, "flatten squeeze unsqueeze")
PERMUTE_FUNCTIONS: set = existing_attrs(torch, "permute")
TRANSPOSE_FUNCTIONS: set = existing_attrs(torch, "transpose swapaxes swapdims")

SPATIAL_FUNCTIONS: set = existing_attrs(
    F,
    "max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d "
    "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
    "adaptive_max_pool3d lp_pool1d lp_pool2d interpolate upsample upsample_nearest "
    "upsample_bilinear max_pool2d_with_indices",
) | existing_attrs(torch, "max_pool1d max_pool2d max_pool3d avg_pool1d adaptive_avg_pool1d adaptive_max_pool1d")
PAD_FUNCTIONS: set = existing_attrs(F, "pad")

SHUFFLE_FUNCTIONS: set = existing_attrs(torch, "channel_shuffle pixel_shuffle pixel_unshuffle") | existing_attrs(
    F, "channel_shuffle pixel_shuffle pixel_unshuffle"
)

ELEMENTWISE_MODULES: tuple[type, ...] = tuple(
    getattr(nn, n)
    for n in (
        "ReLU ReLU6 GELU SiLU Mish Hardswish Hardsigmoid Hardtanh LeakyReLU ELU SELU CELU Sigmoid "
        "Tanh Softplus Softsign Tanhshrink Softshrink Hardshrink LogSigmoid Threshold RReLU "
        "Identity Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout"
    ).split()
    if hasattr(nn, n)
)
SPATIAL_MODULES: tuple[type, ...] = tuple(
    getattr(nn, n)
    for n in (
        "MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d "
        "AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d "
        "LPPool1d LPPool2d LPPool3d FractionalMaxPool2d FractionalMaxPool3d Upsample "
        "UpsamplingNearest2d UpsamplingBilinear2d ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d "
        "ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d ReflectionPad3d "
        "ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d"
    ).split()
    if hasattr(nn, n)
)
SOFTMAX_MODULES: tuple[type, ...] = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
SHUFFLE_MODULES: tuple[type, ...] = tuple(
    getattr(nn, n) for n in ("PixelShuffle", "PixelUnshuffle", "ChannelShuffle") if hasattr(nn, n)
)
RECURRENT_MODULES: tuple[type, ...] = (nn.RNNBase, nn.RNNCellBase)
CONV_MODULES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE_MODULES: tuple[type, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BATCHNORM_MODULES: tuple[type, ...] = (nn.modules.batchnorm._NormBase,)  # BN, SyncBN, InstanceNorm
LAYERNORM_MODULES: tuple[type, ...] = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def function_name(fn) -> str:
    """Readable name of a call_function target, for reasons and summaries."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", repr(fn))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    return f"{module}.{name}" if module else name
