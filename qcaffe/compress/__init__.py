"""Model compression built into qcaffe.

μL2Q / Quantization-caffe (compression.md section 1): ``weights_compress`` and
``activations_compress`` on any layer.

* :mod:`.rounding` – half-away-from-zero and friends, float64 statistics;
* :mod:`.quantizers` – ULQ, Ternary, Ternary_Quantize, Quantize, Clip as pure functions;
* :mod:`.hooks` – attaches them to layers (fake quantization + straight-through gradients);
* :mod:`.state` – the BlobProto 10–17 fields in .caffemodel files;
* :mod:`.export` – integer codes and scales to ``.npz``;
* :mod:`.report` – per-layer bits / distinct values / packed size (``qcaffe compress_report``);
* :mod:`.apot` – APoT (compression.md section 3): level sets, weight/input quantizers and
  their gradients, used by the ``APoTConvolution`` / ``APoTInnerProduct`` layer types.

DNS / INQ (compression.md section 2; the layers are in :mod:`qcaffe.layers.dns` and
:mod:`qcaffe.layers.inq`):

* :mod:`.dns` – DNS statistics, threshold, surgery as pure functions;
* :mod:`.inq` – INQ exponent range, partition and power-of-two rounding;
* :mod:`.convert` – the fork's dns_to_normal / model2INQ_raw / inq_to_normal conversions;
* :mod:`.sparsity` – kept / total, INQ bits and the size stored sparse (compress_report).

Submodules are imported on demand (``qcaffe.blob`` needs :mod:`.state` while
:mod:`.hooks` needs the layer base class).
"""
