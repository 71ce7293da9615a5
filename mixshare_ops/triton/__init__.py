"""The Triton backend: the ops ``torch.ops.mixshare_ops.triton_<op>``.

One module per op family, each with its kernels, launchers and op
definitions: :mod:`.boxes` (cutmix_boxes, cutmix_mask), :mod:`.box_mix`,
:mod:`.cutmix_unmix`, :mod:`.cutmix_unmix_pool`; shared constants, tile
heuristics, device and launch helpers in :mod:`._common`. Same schemas and
semantics as the compiled ops of csrc/ops.cpp; each op checks its arguments
with :mod:`mixshare_ops.checks` (including the data-dependent ones, which the
public wrappers cannot check while tracing) and launches its kernels.

Importing this package (done by ``import mixshare_ops``) imports triton and
defines the kernels: ``TRITON_INTERPRET=1`` (the Triton interpreter, which
runs the kernels on CPU tensors) takes effect only if set before
``import mixshare_ops``, which imports this package only where triton is
installed (without it the ``triton_<op>`` ops do not exist and the
``triton`` backend is not usable).
"""

from mixshare_ops.triton import box_mix, boxes, cutmix_unmix, cutmix_unmix_pool  # noqa: F401
