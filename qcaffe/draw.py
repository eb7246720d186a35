"""pycaffe's ``caffe.draw``: draw a NetParameter as a graph (layers as boxes, blobs as octagons).

Caffe equivalent: python/caffe/draw.py (same functions and labels).  Differences, so that it
works where pydot or Graphviz are missing:

* the graph is built as DOT source by qcaffe itself (:func:`get_dot_source`), so
  ``draw_net(net, 'LR', ext='dot')`` and ``draw_net_to_file(net, 'net.dot')`` need nothing
  else;
* other formats (png, svg, pdf...) are rendered by Graphviz's ``dot``, through pydot (or
  pydotplus) when installed, else by running the ``dot`` program; without either a clear
  error says what to install;
* :func:`get_pydot_graph` needs pydot (or pydotplus), as upstream.
"""
import shutil
import subprocess

from .proto import caffe_pb2

__all__ = ['get_pooling_types_dict', 'get_edge_label', 'get_layer_lr_mult', 'get_layer_label',
           'choose_color_by_layertype', 'get_dot_source', 'get_pydot_graph', 'draw_net',
           'draw_net_to_file']

LAYER_STYLE_DEFAULT = {'shape': 'record', 'fillcolor': '#6495ED', 'style': 'filled'}
NEURON_LAYER_STYLE = {'shape': 'record', 'fillcolor': '#90EE90', 'style': 'filled'}
BLOB_STYLE = {'shape': 'octagon', 'fillcolor': '#E0E0E0', 'style': 'filled'}


def _pydot():
    try:
        import pydotplus as pydot
    except ImportError:
        try:
            import pydot
        except ImportError:
            raise ImportError('caffe.draw.get_pydot_graph needs pydot (pip install pydot) and '
                              'Graphviz; draw_net(..., ext="dot") works without them')
    return pydot


def get_pooling_types_dict():
    """{enum value: name} of PoolingParameter.PoolMethod."""
    desc = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {v.number: name for name, v in desc.values_by_name.items()}


def get_edge_label(layer):
    """"Batch <n>" for Data layers, num_output for (De)Convolution and InnerProduct."""
    if layer.type == 'Data':
        return 'Batch ' + str(layer.data_param.batch_size)
    if layer.type in ('Convolution', 'Deconvolution'):
        return str(layer.convolution_param.num_output)
    if layer.type == 'InnerProduct':
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a Convolution/Deconvolution/InnerProduct layer."""
    if layer.type not in ('Convolution', 'Deconvolution', 'InnerProduct'):
        raise ValueError('%s layers have no learning rate multipliers to display '
                         '(only Convolution, Deconvolution and InnerProduct)' % layer.type)
    if len(layer.param) > 2:
        raise ValueError('layer %r has %d params; at most 2 (weights, bias) are expected'
                         % (layer.name, len(layer.param)))
    weight, bias = 1.0, 1.0
    if len(layer.param) >= 1:
        weight = layer.param[0].lr_mult
    if len(layer.param) == 2:
        bias = layer.param[1].lr_mult
    return weight, bias


def _first(values, default):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """The node label: name, (type) and, for spatial layers, kernel/stride/pad."""
    separator = r'\n' if rankdir in ('TB', 'BT') else ' '
    if layer.type in ('Convolution', 'Deconvolution', 'Pooling'):
        if layer.type == 'Pooling':
            param = layer.pooling_param
            kernel, stride, pad = param.kernel_size, param.stride, param.pad
            descriptor = '%s%s(%s %s)' % (layer.name, separator, layer.type,
                                          get_pooling_types_dict()[param.pool])
        else:
            param = layer.convolution_param
            kernel = _first(param.kernel_size, 1)
            stride = _first(param.stride, 1)
            pad = _first(param.pad, 0)
            descriptor = '%s%s(%s)' % (layer.name, separator, layer.type)
        label = '"%s%skernel size: %d%sstride: %d%spad: %d' % (
            descriptor, separator, kernel, separator, stride, separator, pad)
    else:
        label = '"%s%s(%s)' % (layer.name, separator, layer.type)
    if display_lrm and layer.type in ('Convolution', 'Deconvolution', 'InnerProduct'):
        w, b = get_layer_lr_mult(layer)
        label += '%slr mult: %s, %s' % (separator, _num(w), _num(b))
    return label + '"'


def _num(x):
    return repr(float(x))


def choose_color_by_layertype(layertype):
    """Fill colour by layer type (upstream's palette)."""
    if layertype in ('Convolution', 'Deconvolution'):
        return '#FF5050'
    if layertype == 'Pooling':
        return '#FF9900'
    if layertype == 'InnerProduct':
        return '#CC33FF'
    return '#6495ED'


def _graph_items(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """(nodes, edges): nodes {name: attrs}, edges [(src, dst, attrs)] as upstream builds them."""
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if phase is not None:
            included = not len(layer.include)
            for rule in layer.include:
                if rule.HasField('phase'):
                    included = included or rule.phase == phase
            for rule in layer.exclude:
                if rule.HasField('phase') and rule.phase == phase:
                    included = False
            if not included:
                continue
        node_label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node_name = '%s_%s' % (layer.name, layer.type)
        if len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]:
            # in-place layers are drawn as neuron nodes next to their blob
            nodes[node_name] = dict(NEURON_LAYER_STYLE, label=node_label)
        else:
            style = dict(LAYER_STYLE_DEFAULT, label=node_label)
            style['fillcolor'] = choose_color_by_layertype(layer.type)
            nodes[node_name] = style
        for bottom_blob in layer.bottom:
            nodes.setdefault(bottom_blob + '_blob', dict(BLOB_STYLE, label=bottom_blob))
            edges.append((bottom_blob + '_blob', node_name, {}))
        for top_blob in layer.top:
            nodes.setdefault(top_blob + '_blob', dict(BLOB_STYLE, label=top_blob))
            edge = {'label': get_edge_label(layer)} if label_edges else {}
            edges.append((node_name, top_blob + '_blob', edge))
    return nodes, edges


def _quote(value):
    value = str(value)
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        return value
    return '"%s"' % value.replace('\\', '\\\\').replace('"', '\\"')


def _attrs(attrs):
    return ', '.join('%s=%s' % (k, _quote(v)) for k, v in sorted(attrs.items()))


def get_dot_source(caffe_net, rankdir='LR', label_edges=True, phase=None, display_lrm=False):
    """The graph of NetParameter ``caffe_net`` as Graphviz DOT text (no pydot needed)."""
    nodes, edges = _graph_items(caffe_net, rankdir, label_edges, phase, display_lrm)
    lines = ['digraph %s {' % _quote(caffe_net.name or 'Net'),
             '  graph [rankdir=%s];' % _quote(rankdir)]
    for name, attrs in nodes.items():
        lines.append('  %s [%s];' % (_quote(name), _attrs(attrs)))
    for src, dst, attrs in edges:
        lines.append('  %s -> %s%s;' % (_quote(src), _quote(dst),
                                         ' [%s]' % _attrs(attrs) if attrs else ''))
    lines.append('}')
    return '\n'.join(lines) + '\n'


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """A pydot.Dot of the net (needs pydot or pydotplus)."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name if caffe_net.name else 'Net', graph_type='digraph',
                      rankdir=rankdir)
    nodes, edges = _graph_items(caffe_net, rankdir, label_edges, phase, display_lrm)
    for name, attrs in nodes.items():
        graph.add_node(pydot.Node(_quote(name), **attrs))
    for src, dst, attrs in edges:
        graph.add_edge(pydot.Edge(_quote(src), _quote(dst), **attrs))
    return graph


def _render(dot_source, ext):
    try:
        pydot = _pydot()
    except ImportError:
        pydot = None
    if pydot is not None:
        graphs = pydot.graph_from_dot_data(dot_source)
        graph = graphs[0] if isinstance(graphs, list) else graphs
        return graph.create(format=ext)
    dot = shutil.which('dot')
    if dot is None:
        raise ImportError('drawing a net as %r needs Graphviz (the "dot" program, e.g. '
                          'apt-get install graphviz); without it use ext="dot" for the DOT '
                          'source' % ext)
    return subprocess.run([dot, '-T' + ext], input=dot_source.encode('utf-8'),
                          capture_output=True, check=True).stdout


def draw_net(caffe_net, rankdir, ext='png', phase=None, display_lrm=False):
    """The image of the net as bytes in format ``ext`` ('dot' gives DOT source bytes)."""
    source = get_dot_source(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in ('dot', 'gv', 'raw'):
        return source.encode('utf-8')
    return _render(source, ext)


def draw_net_to_file(caffe_net, filename, rankdir='LR', phase=None, display_lrm=False):
    """Draw the net to ``filename``, the format given by its extension (.png, .svg, .dot...)."""
    ext = filename[filename.rfind('.') + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, 'wb') as fid:
        fid.write(data)
