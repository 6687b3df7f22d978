"""What an exported program's graph may call, and what its symbolic sizes may say (torch-free).

``pt2_archive`` checks every node of a ``.pt2``'s graph JSON against ``ALLOWED_TARGETS`` and every
symbolic size against ``check_expr``; ``export.check_loaded`` checks the loaded program's nodes against the
same list. Why these lists and not others: the comments at each table.

Example:
    >>> from modelpress.optimize.sources.pt2_ops import check_expr, target_allowed
    >>> target_allowed("torch.ops.aten.linear.default"), target_allowed("torch.ops.aten.from_file.default")
    (True, False)
    >>> check_expr("Mul(Integer(4), Symbol('s77', positive=True, integer=True))") is None
    True
"""

from __future__ import annotations

import re
from typing import Any

MAX_EXPR_CHARS = 2000

# Pure tensor ATen operators, by op packet → overloads. Made from what torch.export (2.13, the default
# training IR) emits for an MLP, a CNN with BatchNorm, torchvision ResNet/MobileNet/EfficientNet/ViT/
# ConvNeXt/DenseNet/ShuffleNet/RegNet/Swin, a BERT and DistilBERT classifier and mean-pooled encoder
# (hf.SequenceClassifier/MeanPooledEncoder), nn.TransformerEncoder and a module of common functional calls;
# plus their close relatives (other convolutions, pools, activations, reductions). Only overloads whose
# schema mutates nothing and has no ``out=`` argument are listed: ``tests/optimize/sources/
# test_pt2_archive.py`` checks that against torch's schemas. Anything else (``aten.from_file``,
# ``aten.copy_``, ``*.out``, other namespaces, higher-order ops) is refused by name.
_PURE = """
linear.default conv1d.default,padding conv2d.default,padding conv3d.default,padding conv_transpose1d.default
conv_transpose2d.input conv_transpose3d.input convolution.default matmul.default mm.default bmm.default
addmm.default baddbmm.default mv.default dot.default einsum.default t.default
add.Tensor,Scalar sub.Tensor,Scalar rsub.Tensor,Scalar mul.Tensor,Scalar div.Tensor,Scalar,Tensor_mode,Scalar_mode
neg.default abs.default pow.Tensor_Scalar,Tensor_Tensor,Scalar sqrt.default rsqrt.default exp.default log.default
log1p.default expm1.default sin.default cos.default erf.default reciprocal.default sign.default floor.default
ceil.default round.default,decimals trunc.default remainder.Tensor,Scalar fmod.Tensor,Scalar maximum.default
minimum.default clamp.default,Tensor clamp_min.default,Tensor clamp_max.default,Tensor
where.self,ScalarOther,ScalarSelf,Scalar masked_fill.Scalar,Tensor lerp.Scalar,Tensor square.default
relu.default gelu.default silu.default sigmoid.default tanh.default hardswish.default hardsigmoid.default
hardtanh.default leaky_relu.default elu.default selu.default celu.default mish.default softplus.default
prelu.default _prelu_kernel.default glu.default log_sigmoid.default softmax.int log_softmax.int _softmax.default
_log_softmax.default logsumexp.default
layer_norm.default native_layer_norm.default batch_norm.default _native_batch_norm_legit_no_training.default
group_norm.default native_group_norm.default instance_norm.default linalg_vector_norm.default rms_norm.default
embedding.default
max_pool1d.default max_pool2d.default max_pool3d.default max_pool2d_with_indices.default avg_pool1d.default
avg_pool2d.default avg_pool3d.default adaptive_avg_pool1d.default adaptive_avg_pool2d.default
adaptive_avg_pool3d.default adaptive_max_pool1d.default adaptive_max_pool2d.default
upsample_nearest1d.vec,default upsample_nearest2d.vec,default upsample_bilinear2d.vec,default
upsample_bicubic2d.vec,default upsample_linear1d.vec,default pixel_shuffle.default pixel_unshuffle.default
view.default,dtype reshape.default _unsafe_view.default view_as.default reshape_as.default permute.default
transpose.int flatten.using_ints unflatten.int unsqueeze.default squeeze.default,dim,dims expand.default
expand_as.default cat.default concat.default stack.default split.Tensor,sizes split_with_sizes.default
chunk.default unbind.int slice.Tensor select.int index.Tensor index_select.default gather.default
narrow.default,Tensor contiguous.default clone.default alias.default detach.default roll.default flip.default
repeat.default tile.default pad.default constant_pad_nd.default movedim.int,intlist lift_fresh_copy.default
type_as.default
new_zeros.default new_ones.default new_full.default zeros.default ones.default full.default zeros_like.default
ones_like.default full_like.default arange.default,start,start_step scalar_tensor.default
mean.default,dim sum.default,dim_IntList amax.default amin.default max.default,dim,other min.default,dim,other
argmax.default argmin.default prod.default,dim_int var.default,dim,correction std.default,dim,correction
cumsum.default topk.default any.default,dim,dims all.default,dim,dims
eq.Tensor,Scalar ne.Tensor,Scalar lt.Tensor,Scalar le.Tensor,Scalar gt.Tensor,Scalar ge.Tensor,Scalar
logical_not.default logical_and.default logical_or.default __and__.Tensor,Scalar __or__.Tensor,Scalar
bitwise_not.default bitwise_and.Tensor,Scalar bitwise_or.Tensor,Scalar isnan.default
to.dtype,device,dtype_layout,other _to_copy.default _assert_tensor_metadata.default fill.Scalar,Tensor
scaled_dot_product_attention.default dropout.default feature_dropout.default alpha_dropout.default item.default
sym_size.int,default sym_numel.default sym_stride.int,default sym_storage_offset.default _assert_scalar.default
"""
PURE_OPS: frozenset[str] = frozenset(
    f"torch.ops.aten.{packet}.{overload}"
    for entry in _PURE.split() for packet, _, overloads in [entry.partition(".")] for overload in overloads.split(","))
# In-place activations and arithmetic that torch.export's default (training) IR keeps, e.g. ResNet's
# ``relu_``/``add_``, MobileNet's ``hardswish_``, EfficientNet's ``silu_``/``dropout_``, Swin's ``fill_``.
# Allowed only on a value the program computed itself (``pt2_archive.check_program``): never on an input, weight,
# buffer or constant, or a view of one. The worker also re-checks the functionalized program with torch's
# default functional verifier (``export.check_loaded``).
INPLACE_OPS: frozenset[str] = frozenset(f"torch.ops.aten.{x}" for x in """
relu_.default hardtanh_.default leaky_relu_.default elu_.default silu_.default hardswish_.default
hardsigmoid_.default sigmoid_.default tanh_.default gelu_.default dropout_.default add_.Tensor add_.Scalar
mul_.Tensor mul_.Scalar sub_.Tensor div_.Tensor div_.Scalar fill_.Scalar fill_.Tensor masked_fill_.Scalar
clamp_.default clamp_min_.default""".split())
# Python-level operators on symbolic sizes (``x.shape[0] * 64``) that export emits as nodes.
SYM_OPS: frozenset[str] = frozenset(
    [f"_operator.{n}" for n in "getitem add sub mul floordiv truediv mod neg eq ne ge gt le lt and_ or_ not_".split()]
    + ["math.ceil", "math.floor", "math.trunc"])
ALLOWED_TARGETS: frozenset[str] = PURE_OPS | INPLACE_OPS | SYM_OPS
# Ops whose outputs share memory with their first tensor input: an in-place op on such an output changes
# the input too. (Every other allowed op returns new memory.)
VIEW_OPS = frozenset(f"torch.ops.aten.{x}" for x in """
view.default view.dtype reshape.default _unsafe_view.default view_as.default reshape_as.default permute.default
transpose.int t.default flatten.using_ints unflatten.int unsqueeze.default squeeze.default squeeze.dim
squeeze.dims expand.default expand_as.default split.Tensor split.sizes split_with_sizes.default chunk.default
unbind.int slice.Tensor select.int narrow.default narrow.Tensor contiguous.default alias.default detach.default
movedim.int movedim.intlist to.dtype to.device to.dtype_layout to.other type_as.default
""".split()) | {"_operator.getitem"}
# Inference forms only: a training-mode batch_norm would update running statistics, dropout would be random.
MUST_BE_FALSE = {"torch.ops.aten.batch_norm.default": "training", "torch.ops.aten.dropout.default": "train",
                 "torch.ops.aten.dropout_.default": "train", "torch.ops.aten.feature_dropout.default": "train",
                 "torch.ops.aten.alpha_dropout.default": "train"}

# ----------------------------------------------------------------------------- symbolic shapes
# sympy functions torch's deserializer puts in sympify's namespace, sympy's own arithmetic, and the
# assumptions export writes (``Symbol('s77', positive=True, integer=True)``). No ``Pow``/shifts: a
# 15-digit exponent is a denial of service.
_EXPR_NAMES = frozenset("""Symbol Integer Rational Float Mul Add Min Max Mod FloorDiv CeilDiv CleanDiv PythonMod
ModularIndexing Where IntTrueDiv FloatTrueDiv TruncToInt TruncToFloat CeilToInt FloorToInt RoundToInt
RoundDecimal ToFloat Identity Eq Ne Lt Le Gt Ge And Or Not True False oo positive negative nonnegative
nonpositive integer real finite""".split())
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>\d{1,15}(?:\.\d{1,15})?)"
                         r"|(?P<str>'[A-Za-z][A-Za-z0-9_]{0,40}')|(?P<op>==|!=|<=|>=|//|[-+*/(),=<>]))")
SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")  # s77, u0, ps0, zuf0: the names torch gives size symbols


def check_expr(expr: Any) -> str | None:
    """Why ``expr`` is not a plain symbolic-size expression (torch ``sympify``s it: ``eval``), or None.

    Example:
        >>> check_expr("__import__('os').system('id')")
        "'__import__' is not a size function or symbol"
    """
    if not isinstance(expr, str) or not expr.strip():
        return "not a string"
    if len(expr) > MAX_EXPR_CHARS:
        return f"longer than {MAX_EXPR_CHARS} characters"
    if "**" in expr:
        return "a power (**)"
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if not expr[pos:].strip():
                break
            return f"unexpected {expr[pos:pos + 20]!r}"
        name = m.group("name")
        if name is not None and name not in _EXPR_NAMES and not SYMBOL.fullmatch(name):
            return f"{name!r} is not a size function or symbol"
        pos = m.end()
    return None


def target_allowed(target: Any) -> bool:
    """True when ``target`` (as the graph JSON spells it) is an operator modelpress runs.

    Example:
        >>> target_allowed("torch.ops.aten.relu_.default"), target_allowed("torch.ops.aten.copy_.default")
        (True, False)
    """
    return isinstance(target, str) and target in ALLOWED_TARGETS


def short_op(target: Any) -> str:
    """An operator as people write it, for messages.

    Example:
        >>> short_op("torch.ops.aten.from_file.default")
        'aten.from_file.default'
    """
    text = str(target)[:120]
    return text.removeprefix("torch.ops.")


__all__ = ["ALLOWED_TARGETS", "INPLACE_OPS", "MUST_BE_FALSE", "PURE_OPS", "SYMBOL", "SYM_OPS", "VIEW_OPS",
           "check_expr", "short_op", "target_allowed"]
