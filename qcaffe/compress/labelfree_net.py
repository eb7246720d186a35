"""Label-free compression of a whole net: a trained Caffe model (prototxt + caffemodel) and
unlabeled images in, low-bit weights, re-estimated BatchNorm statistics and a ``Quant`` layer
per ReLU out (compression.md 4(b), 4(d), 4(g)).

Original equivalent: the three scripts of CAS-CLab/Label-free-Network-Compression, run in
order on one config file --

1. ``weights_quan.py``: a ``<name>_alpha_term`` Scale layer after every Convolution /
   InnerProduct / DepthwiseConvolution; their weights become alpha·Q per output channel
   (:func:`qcaffe.compress.labelfree.fit_scale`), 8-bit fixed point for the first and the last
   of them, 4-bit powers of two for the others; every other blob is copied;
2. ``renorm.py``: one TRAIN-phase forward on 1,000 training images with every BatchNorm in
   batch-statistics mode and moving_average_fraction 0: each BatchNorm keeps the mean and the
   m/(m-1)-corrected variance of its input in the quantized net, the BatchNorms before it
   normalising with their own statistics of the same images;
3. ``activations_quan.py``: one TRAIN-phase forward on 400 images with the new statistics, a
   step per ReLU top (:class:`qcaffe.compress.labelfree.StepSearch`), and the final prototxt:
   every ReLU a ``Quant`` layer with its step in ``relu_param.negative_slope``, BatchNorm
   ``use_global_stats: true``.

The original holds all images of a stage in one batch (its README warns of > 12 GB).  Here
images go through the net in mini-batches and only statistics are kept, so memory does not
grow with the number of images.  That takes several passes over the images: BatchNorms are
measured in dependency order (a pass measures every BatchNorm whose input no unmeasured
BatchNorm feeds; each measured one then normalises with those statistics, exactly what the
one big batch does), and the step searches advance one update per pass (all ReLUs together).
Every pass sees the same transformed images and dropout masks
(:class:`qcaffe.data.calibration.CalibrationImages`).

Deviations from the original, as 4(g) recommends: the Scale layer also follows a
DepthwiseConvolution and every other layer's blobs (PReLU slopes...) are copied; dropout runs
as in the original (TRAIN) unless ``dropout=False``; images are the first N records with the
TRAIN transform and a fixed seed; dead ReLUs get step 1; loops are capped; all-zero weight
rows stay zero; a transposed InnerProduct gets one alpha per output (the original's per-row
fit would give one per input and fail); "first and last" are counted in the TRAIN-phase net
(the original counts the prototxt's layers of every phase).  The Data layers of the output prototxt are the user's (the original points
them at its validation set with batch 50).
"""
import collections
import logging
import time

import numpy as np

from .. import backend
from ..backend import to_host
from ..data.calibration import CalibrationImages
from ..io.errors import QcaffeError
from ..net import Net, filter_net
from ..proto import caffe_pb2
from .labelfree import StepSearch, StepStats, act_max_code, fit_scale

log = logging.getLogger('qcaffe')

QUANTIZED_TYPES = ('Convolution', 'InnerProduct', 'DepthwiseConvolution')
ALPHA_SUFFIX = '_alpha_term'
# bit-width flags: (smallest, largest) accepted
WEIGHT_BITS_RANGE = (2, 8)       # powers of two: 2^(k-1) - 2 exponents above 2^iw
EDGE_BITS_RANGE = (2, 16)        # fixed point of the first and last layer
ACT_BITS_RANGE = (2, 16)         # Quant codes 0 ... 2^(k-1) - 1
PROGRESS_S = 10.0                # log progress inside a pass at most this often


class LabelFreeError(QcaffeError):
    """A net, option or data set the label-free pipeline cannot work with."""


Options = collections.namedtuple(
    'Options', 'weight_bits edge_bits act_bits bn_images act_images batch_size seed dropout')
Options.__new__.__defaults__ = (4, 8, 8, 1000, 400, 100, 1, True)
Options.__doc__ = """Settings of :func:`compress` (defaults: the original's).

``weight_bits``: power-of-two bits of the inner layers (4); ``edge_bits``: fixed-point bits of
the first and last Convolution/InnerProduct (8); ``act_bits``: activation bits, codes
0 … 2^(k-1) - 1 (8: 0 … 127); ``bn_images`` / ``act_images``: images for the BatchNorm
statistics (1000) and the activation steps (400); ``batch_size``: images per forward (memory
grows with it, not with the image counts); ``seed``: the random draws (crops, mirrors,
dropout); ``dropout``: TRAIN-phase dropout during calibration, as the original (4(g)#3)."""


def check_options(opt):
    """Raise :class:`LabelFreeError` naming the option (and its ``qcaffe labelfree`` flag)
    and its valid range."""
    def name(field):
        return '%s (--%s)' % (field, field.replace('_', '-'))
    for field, (lo, hi) in (('weight_bits', WEIGHT_BITS_RANGE), ('edge_bits', EDGE_BITS_RANGE),
                            ('act_bits', ACT_BITS_RANGE)):
        value = getattr(opt, field)
        if not lo <= value <= hi:
            raise LabelFreeError('%s must be in %d..%d, got %d' % (name(field), lo, hi, value))
    for field, least in (('bn_images', 2), ('act_images', 1), ('batch_size', 1)):
        if getattr(opt, field) < least:
            raise LabelFreeError('%s must be at least %d, got %d'
                                 % (name(field), least, getattr(opt, field)))


# --------------------------------------------------------------------- prototxt surgery
def _channel_axis(lp):
    """The output-channel axis of a quantized layer's top (its convolution/inner product
    ``axis``), the axis of its alpha Scale layer."""
    p = lp.inner_product_param if lp.type == 'InnerProduct' else lp.convolution_param
    return int(p.axis)


def insert_alpha_layers(net_param):
    """weights_quan.py's Scale layer ``<name>_alpha_term`` in place on top[0] right after
    every quantized layer, ``bias_term`` as that layer's (4(a)); a copy of ``net_param``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for lp in net_param.layer:
        out.layer.add().CopyFrom(lp)
        if lp.type not in QUANTIZED_TYPES:
            continue
        scale = out.layer.add()
        scale.name = lp.name + ALPHA_SUFFIX
        scale.type = 'Scale'
        scale.bottom.append(lp.top[0])
        scale.top.append(lp.top[0])
        scale.include.extend(lp.include)
        scale.exclude.extend(lp.exclude)
        p = lp.inner_product_param if lp.type == 'InnerProduct' else lp.convolution_param
        scale.scale_param.bias_term = p.bias_term
        if _channel_axis(lp) != 1:
            scale.scale_param.axis = _channel_axis(lp)
    return out


def calibration_param(fp_param, dropout=True):
    """The net the three stages run: the BN-update prototxt of weights_quan.py (alpha Scale
    layers, BatchNorm batch statistics with moving_average_fraction 0) in the TRAIN phase;
    with ``dropout`` False the Dropout layers run as in TEST (identity)."""
    param = insert_alpha_layers(fp_param)
    param.state.phase = caffe_pb2.TRAIN
    param = filter_net(param)
    for lp in param.layer:
        if lp.type == 'BatchNorm':
            lp.batch_norm_param.moving_average_fraction = 0
            lp.batch_norm_param.use_global_stats = False
        elif lp.type == 'Dropout' and not dropout:
            lp.phase = caffe_pb2.TEST
    return param


def output_param(fp_param, steps, act_bits=8):
    """activations_quan.py's final prototxt: alpha Scale layers, BatchNorm with global
    statistics (moving_average_fraction 0.999), every calibrated ReLU a ``Quant`` layer with
    its step (``steps``: ReLU layer name -> step)."""
    param = insert_alpha_layers(fp_param)
    for lp in param.layer:
        if lp.type == 'BatchNorm':
            lp.batch_norm_param.moving_average_fraction = 0.999
            lp.batch_norm_param.use_global_stats = True
        elif lp.type == 'ReLU' and lp.name in steps:
            lp.type = 'Quant'
            lp.relu_param.negative_slope = float(steps[lp.name])
            if act_bits != 8:
                lp.relu_param.quant_bits = act_bits
    return param


def _data_layer(param, source):
    """The layer that receives the images: the TRAIN net's Data layer (its transform is used),
    else its first Input layer (raw pixels)."""
    data = [lp for lp in param.layer if lp.type == 'Data']
    if len(data) > 1:
        raise LabelFreeError('%s: the TRAIN-phase net has %d Data layers (%s); label-free '
                             'compression feeds the images through one'
                             % (source, len(data), ', '.join(lp.name for lp in data)))
    found = data or [lp for lp in param.layer if lp.type == 'Input']
    if found:
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(found[0])           # a copy: the net's own gets replaced by a stand-in
        return lp
    raise LabelFreeError('%s: no Data or Input layer in the TRAIN-phase net to feed the '
                         'images to (layer types: %s)'
                         % (source, ', '.join(sorted({lp.type for lp in param.layer}))))


def _stand_in(data_lp, item_shape, batch_size):
    """The Input layer that takes the images in place of ``data_lp``: a Data layer's tops as
    (batch, *item) images [+ (batch,) labels]; an Input layer with its first shape so set."""
    lp = caffe_pb2.LayerParameter(name=data_lp.name, type='Input', top=data_lp.top)
    if data_lp.type == 'Input':
        lp.input_param.CopyFrom(data_lp.input_param)
        del lp.input_param.shape[:]
        lp.input_param.shape.extend(data_lp.input_param.shape or [caffe_pb2.BlobShape()])
        del lp.input_param.shape[0].dim[:]
    else:
        lp.input_param.shape.add()
        if len(data_lp.top) > 1:
            lp.input_param.shape.add().dim.append(batch_size)
    lp.input_param.shape[0].dim.extend((batch_size,) + tuple(item_shape))
    return lp


# ------------------------------------------------------------------------- the stages
class _Progress(object):
    """Log "<what>: batch i/n" at most every PROGRESS_S seconds, and the time at the end."""

    def __init__(self, what, total):
        self.what, self.total = what, total
        self.start = self.last = time.time()

    def step(self, i):
        now = time.time()
        if now - self.last >= PROGRESS_S and i + 1 < self.total:
            log.info('%s: batch %d/%d', self.what, i + 1, self.total)
            self.last = now

    def done(self):
        log.info('%s: done in %.1f s', self.what, time.time() - self.start)


class ChannelMoments(object):
    """Per-channel mean and biased variance of a BatchNorm's input (axis 1; all other axes
    pooled), accumulated over batches in float64 around the first batch's mean."""

    def __init__(self):
        self.count = 0
        self.shift = self.s1 = self.s2 = None

    def add(self, x):
        n = x.shape[0] if x.ndim else 1
        c = x.shape[1] if x.ndim > 1 else 1
        v = x.reshape(n, c, -1)
        if self.shift is None:
            self.shift = v.mean(axis=(0, 2), dtype=np.float64)
            self.s1 = self.s2 = 0
        d = v.astype(np.float64) - self.shift[None, :, None]
        self.s1 = self.s1 + d.sum(axis=(0, 2))
        self.s2 = self.s2 + (d * d).sum(axis=(0, 2))
        self.count += n * v.shape[2]

    def result(self):
        """(mean, biased variance) float32 on the host, and the number m of values."""
        d = to_host(self.s1) / self.count
        var = np.maximum(to_host(self.s2) / self.count - d * d, 0)
        return ((to_host(self.shift) + d).astype(np.float32), var.astype(np.float32),
                self.count)


class LabelFree(object):
    """The pipeline on one net: ``LabelFree(fp_param, weights, images, options)``, then
    :meth:`run` returns (final NetParameter for the prototxt, NetParameter with the weights).

    ``fp_param``: the full-precision NetParameter (upgraded); ``weights``: caffemodel path;
    ``images``: LMDB path; ``source`` names the model in messages.
    """

    def __init__(self, fp_param, weights, images, options=Options(), source='<net>'):
        check_options(options)
        self.fp_param, self.opt, self.source = fp_param, options, source
        calib = calibration_param(fp_param, options.dropout)
        self.data_lp = _data_layer(calib, source)
        count = max(options.bn_images, options.act_images)
        is_data = self.data_lp.type == 'Data'
        dp = self.data_lp.data_param
        self.images = CalibrationImages(
            images, count, options.batch_size,
            self.data_lp.transform_param if is_data else None, caffe_pb2.TRAIN, options.seed,
            force_color=is_data and (dp.force_encoded_color or
                                     self.data_lp.transform_param.force_color),
            force_gray=is_data and self.data_lp.transform_param.force_gray,
            layer_name=self.data_lp.name,
            what='--images (%d images asked: %d for BatchNorm, %d for activations)'
                 % (count, options.bn_images, options.act_images))
        if not is_data:
            self._check_input_shape()
        for lp in calib.layer:
            if lp.name == self.data_lp.name:
                lp.CopyFrom(_stand_in(self.data_lp, self.images.item_shape,
                                      options.batch_size))
        self.net = Net.from_param(calib, phase=caffe_pb2.TRAIN, source=source)
        self.bn_ids = [i for i, l in enumerate(self.net.layers) if l.type == 'BatchNorm']
        self.quantized = [i for i, l in enumerate(self.net.layers) if l.type in QUANTIZED_TYPES]
        if not self.bn_ids:
            raise LabelFreeError('%s: the TRAIN-phase net has no BatchNorm layer; label-free '
                                 'compression re-estimates BatchNorm statistics to make up for '
                                 'the quantized weights (train the model with BatchNorm)'
                                 % source)
        if not self.quantized:
            raise LabelFreeError('%s: the TRAIN-phase net has no %s layer to quantize'
                                 % (source, '/'.join(QUANTIZED_TYPES)))
        owners = dict(zip(self.net.param_layer_indices, self.net.param_owners))
        for i in self.quantized:
            if owners[(i, 0)] >= 0:     # alpha·Q written twice, the second from the first's Q
                owner = self.net.layer_names[self.net.param_layer_indices[owners[(i, 0)]][0]]
                raise LabelFreeError('%s: layer %r shares its weights with layer %r; label-free '
                                     'compression fits each layer\'s own weights'
                                     % (source, self.net.layer_names[i], owner))
        self.net.copy_from(weights)
        fed = self.data_lp.top[:2] if is_data else self.data_lp.top[:1]   # images [, labels]
        self.inputs = [self.net.blob_by_name(t) for t in fed]

    def _check_input_shape(self):
        shapes = self.data_lp.input_param.shape
        if shapes and tuple(shapes[0].dim[1:]) != self.images.item_shape:
            raise LabelFreeError('%s: Input layer %r expects items of shape %s; the images are %s'
                                 % (self.source, self.data_lp.name, tuple(shapes[0].dim[1:]),
                                    self.images.item_shape))

    # ------------------------------------------------------------------ driving the net
    def _passes(self, count, what):
        """Yield once per batch of the first ``count`` images, with the net's inputs set and
        its random generator seeded for that batch."""
        progress = _Progress(what, -(-count // self.opt.batch_size))
        for index, data, labels in self.images.batches():
            if index * self.opt.batch_size >= count:
                break
            keep = min(len(data), count - index * self.opt.batch_size)
            for blob, array in zip(self.inputs, (data[:keep], labels[:keep])):
                if blob.shape != array.shape:
                    blob.reshape(array.shape)
                blob.mutable_dev_data[...] = backend.to_device(array)
            backend.set_random_seed(self.images.net_seed(index))
            yield index
            progress.step(index)
        progress.done()

    # ----------------------------------------------------------------------- stage 1
    def quantize_weights(self):
        """weights_quan.py: alpha·Q for every quantized layer, in net order."""
        opt, net = self.opt, self.net
        edge = (self.quantized[0], self.quantized[-1])
        log.info('Label-free 1/3: weights -- %d-bit powers of two, first and last of the %d '
                 'Convolution/InnerProduct layers %d-bit fixed point', opt.weight_bits,
                 len(self.quantized), opt.edge_bits)
        for i, layer in enumerate(net.layers):
            if i in self.quantized:
                self._quantize_layer(layer, 'fixed' if i in edge else 'power',
                                     opt.edge_bits if i in edge else opt.weight_bits)
            elif layer.blobs and not layer.name.endswith(ALPHA_SUFFIX):
                log.info('>> %s %s: blobs copied', 'BN/Scale' if layer.type in (
                    'BatchNorm', 'Scale') else layer.type, layer.name)

    def _quantize_layer(self, layer, qtype, bits):
        log.info('>> Conv/FC %s (%s, %d bits)', layer.name, qtype, bits)
        w = layer.blobs[0].cpu_data()
        transposed = (layer.type == 'InnerProduct' and
                      layer.layer_param.inner_product_param.transpose)
        fit = fit_scale(w.T if transposed else w, qtype, bits, report=log.info)
        if len(fit.zero_rows):
            log.warning('Layer %r: output channel(s) %s have all-zero weights: kept at zero '
                        'with alpha 0', layer.name, ', '.join(map(str, fit.zero_rows)))
        q = fit.q.T if transposed else fit.q
        layer.blobs[0].mutable_dev_data[...] = backend.to_device(np.ascontiguousarray(q))
        scale = self.net.layers[self.net.layer_index(layer.name + ALPHA_SUFFIX)]
        scale.blobs[0].mutable_dev_data[...] = backend.to_device(fit.alpha)
        if len(scale.blobs) > 1 and len(layer.blobs) > 1:
            b = layer.blobs[1].cpu_data()
            scale.blobs[1].mutable_dev_data[...] = backend.to_device(
                b * (np.float32(1) - fit.alpha))

    # ----------------------------------------------------------------------- stage 2
    def _bn_dependencies(self):
        """For every layer, the BatchNorm layers upstream of its inputs."""
        net, bns = self.net, set(self.bn_ids)
        writer, deps = {}, []
        for j in range(len(net.layers)):
            d = set()
            for bid in net.bottom_ids[j]:
                w = writer.get(bid)
                if w is not None:
                    d |= deps[w] | ({w} if w in bns else set())
            deps.append(frozenset(d))
            for tid in net.top_ids[j]:
                writer[tid] = j
        return deps

    def renormalize(self):
        """renorm.py: every BatchNorm's statistics of its input in the quantized net."""
        net, count = self.net, self.opt.bn_images
        deps = self._bn_dependencies()
        pending, done = list(self.bn_ids), {}
        log.info('Label-free 2/3: BatchNorm statistics of %d BatchNorm layers over %d images',
                 len(pending), count)
        pass_no = 0
        while pending:
            ready = [i for i in pending if not deps[i] & set(pending)]
            pass_no += 1
            names = ', '.join(net.layer_names[i] for i in ready)
            moments = {i: ChannelMoments() for i in ready}
            for _ in self._passes(count, 'BatchNorm pass %d (%s)' % (pass_no, names)):
                start = 0
                for i in ready:
                    if i > start:
                        net.forward_from_to(start, i - 1)
                    moments[i].add(net.bottom_vecs[i][0].dev_data)
                    start = i
            for i in ready:
                done[i] = moments[i].result()
                self._normalize_with(net.layers[i], *done[i][:2])
            pending = [i for i in pending if i not in ready]
        for i in self.bn_ids:
            mean, var, m = done[i]
            layer = net.layers[i]
            layer.update_running_stats(backend.to_device(mean), backend.to_device(var), m)
            layer.use_global_stats = True    # stage 3 runs the act-int8 net: global statistics
            log.info('>> BN %s: %d channels over m = %d values; mean %s .. %s, variance '
                     '%s .. %s (m/(m-1) corrected)', net.layer_names[i], mean.size, m,
                     _g(mean.min()), _g(mean.max()), _g(to_host(layer.blobs[1].data).min()),
                     _g(to_host(layer.blobs[1].data).max()))

    @staticmethod
    def _normalize_with(layer, mean, var):
        """Make a BatchNorm normalise with the big batch's mean and *biased* variance, as it
        does inside the original's one forward (blobs hold them with scale factor 1)."""
        for blob, value in zip(layer.blobs, (mean, var, np.ones(1, np.float32))):
            blob.mutable_dev_data[...] = backend.to_device(value)
        layer.use_global_stats = True

    # ----------------------------------------------------------------------- stage 3
    def calibrate_activations(self):
        """activations_quan.py: the step of every ReLU; returns {ReLU layer name: step}."""
        net, count = self.net, self.opt.act_images
        max_code = act_max_code(self.opt.act_bits)
        relus = [i for i, l in enumerate(net.layers) if l.type == 'ReLU']
        log.info('Label-free 3/3: activation steps of %d ReLU layers over %d images (codes '
                 '0..%d)', len(relus), count, max_code)
        if not relus:
            return {}
        last_writer = {}
        for j, tids in enumerate(net.top_ids):
            for t in tids:
                last_writer[t] = j
        # the original reads each ReLU top after the whole forward (in-place layers after the
        # ReLU, e.g. TRAIN dropout, have changed it): run up to the top's last writer
        end = {i: last_writer[net.top_ids[i][0]] for i in relus}
        tops = {i: net.top_vecs[i][0] for i in relus}
        for i in relus:
            if net.layers[i].negative_slope:
                log.warning('ReLU %r has negative_slope %g: its Quant layer outputs 0 for '
                            'negative inputs', net.layer_names[i], net.layers[i].negative_slope)
        maxima = dict.fromkeys(relus, -np.inf)
        for _ in self._passes(count, 'activation pass 1 (maxima)'):
            net.forward_from_to(0, max(end.values()))
            for i in relus:
                maxima[i] = max(maxima[i], float(tops[i].dev_data.max()))
        searches = {i: StepSearch(maxima[i], max_code, net.layer_names[i]) for i in relus}
        active = [i for i in relus if not searches[i].done]
        pass_no = 1
        while active:
            pass_no += 1
            stats = {i: StepStats(searches[i].alpha, max_code) for i in active}
            what = 'activation pass %d (%d step searches)' % (pass_no, len(active))
            for _ in self._passes(count, what):
                net.forward_from_to(0, max(end[i] for i in active))
                for i in active:
                    stats[i].add(tops[i].dev_data)
            for i in active:
                stats[i].update(searches[i])
            active = [i for i in active if not searches[i].done]
        steps = {}
        for i in relus:
            s = searches[i]
            log.info('>> processing %s', net.blob_names[net.top_ids[i][0]])
            for line in s.lines():
                log.info(line)
            if s.dead:
                log.warning('ReLU %r never fires on the calibration images (max %g): step 1',
                            net.layer_names[i], maxima[i])
            log.info('>> %s: step %s (max %s)', net.layer_names[i], s.step, _g(maxima[i]))
            steps[net.layer_names[i]] = s.step
        return steps

    # ---------------------------------------------------------------------------- all
    def run(self):
        """The three stages; returns (final prototxt NetParameter, weights NetParameter)."""
        self.quantize_weights()
        self.renormalize()
        steps = self.calibrate_activations()
        self.images.close()
        final = output_param(self.fp_param, steps, self.opt.act_bits)
        weights = self.net.to_proto()
        for lp in weights.layer:
            if lp.name == self.data_lp.name and lp.type == 'Input':
                lp.CopyFrom(self.data_lp)          # the stand-in saved as the user's layer
        return final, weights


def _g(value):
    return '%.6g' % value


def compress(model, weights, images, output_model, output_weights, options=Options()):
    """``qcaffe labelfree``: read ``model`` (prototxt) and ``weights``, calibrate on the LMDB
    ``images``, write ``output_model`` (prototxt) and ``output_weights`` (caffemodel)."""
    from ..io import read_net_param, write_binary_proto, write_prototxt
    fp_param = read_net_param(model)
    final, params = LabelFree(fp_param, weights, images, options, source=model).run()
    write_prototxt(output_model, final)
    write_binary_proto(output_weights, params)
    log.info('Label-free model written: %s (prototxt), %s (weights)', output_model,
             output_weights)
    return final, params
