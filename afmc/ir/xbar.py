"""The ``xbar`` dialect: a weight-stationary layer lowered onto analog arrays.

One analog layer (an ``nn.conv``/``nn.gemm``/``nn.matmul``/``nn.conv_transpose`` that ``partition``
marked analog) becomes, after ``tile``::

    %a  = xbar.unfold(%x) {layer, kind, ...geometry}          : tensor<G x M x K xf32>
    %t  = xbar.mvm(%a) {layer, group, rows = [r0, r1], cols = [c0, c1], slice, significance,
                        array = @sym, encoding, replicas, ...}   : tensor<M x (c1-c0) xf32>   (one per array)
    %s  = xbar.accumulate(%t, ...) {layer, scales = [...]}     : tensor<M x C xf32>  (digital shift-add of
                                                                  slices and row-split partial sums)
    %y  = xbar.assemble(%s, ..., %bias?) {layer, kind, ...}    : the nn op's result type (digital concat of
                                                                  column blocks and groups, bias, layout)

``xbar.mvm`` is one physical array (times ``replicas``): ``array`` names the pool constant holding
its programmed cell levels (integers in [0, 2^bits_per_cell − 1]): shape ``(2, rows, cols)`` for a
differential pair (positive, negative) or ``(rows, cols + 1)`` for offset encoding, whose last
column is the reference column. Its ideal result is the level-domain product: ``a[:, r0:r1] @ (P − N)``
or ``a[:, r0:r1] @ (L[:, :-1] − L[:, -1:])``. ``xbar.accumulate`` weights each input by
``scales[i]`` (= significance × weight scale) and sums them.
"""

from __future__ import annotations

from .dialects import register_op

register_op("xbar.unfold", "Lay a layer's input out as G×M×K row vectors for the arrays (im2col for convolutions).")
register_op("xbar.mvm", "One array's analog matrix-vector products over its rows and columns of the layer.")
register_op("xbar.accumulate", "Digital shift-and-add of bit slices and row-split partial sums.")
register_op("xbar.assemble", "Digital concatenation of column blocks and groups, bias, and output layout.")
