"""Write nets in Python: ``NetSpec``, ``layers`` (``L``), ``params`` (``P``), ``to_proto``.

Caffe equivalent: python/caffe/net_spec.py.  Same behaviour and names, so upstream scripts
run unchanged::

    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[64, 1, 28, 28]), dict(dim=[64])], ntop=2)
    n.conv1 = L.Convolution(n.data, num_output=20, kernel_size=5,
                            weight_filler=dict(type='xavier'),
                            weights_compress=['ULQ', 'ULQ'],
                            weights_compress_param=[{'maxbits': 2}, {'maxbits': 2}])
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    open('net.prototxt', 'w').write(str(n.to_proto()))

Keyword routing (caffe.md 6.7): a key ending in ``param`` is a LayerParameter field; any
other key is looked up first in the layer type's own message (``<type>_param``, derived from
the proto descriptor: ``Convolution`` -> ``convolution_param``), then on LayerParameter
itself (``param``, ``include``, ``loss_weight``, ``weights_compress``...).  Values: scalars
are set, lists extend repeated fields (a list of dicts adds one message per dict), dicts fill
sub-messages, and a bare value for a repeated field becomes a one-element list.

Differences from upstream, all for clearer failures on input upstream rejects anyway: a key
that fits neither message raises AttributeError naming both messages; an empty list leaves
the field empty (upstream: IndexError); tuples count as lists; enum fields also accept their
value names as strings (``pool='MAX'``).
"""
import collections

from .proto import caffe_pb2


def param_name_dict():
    """Layer type name -> prefix of its ``*_param`` field (``'Convolution': 'convolution'``).

    Derived like upstream from LayerParameter's ``*_param`` fields: the message name minus
    ``Parameter`` maps to the field name minus ``_param``.
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith('_param') and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith('Parameter'):
                names[type_name[:-len('Parameter')]] = field.name[:-len('_param')]
    return names


_param_names = param_name_dict()


def _has_field(message, name):
    return name in message.DESCRIPTOR.fields_by_name


def _is_repeated(field):
    # protobuf >= 5 has is_repeated; older versions only the label.
    rep = getattr(field, 'is_repeated', None)
    if rep is not None:
        return rep
    return field.label == field.LABEL_REPEATED


def _scalar(field, value):
    """Convert ``value`` for a scalar field: numpy scalars to Python, enum names to numbers."""
    if hasattr(value, 'item') and not isinstance(value, (list, dict)):
        value = value.item()
    if field.enum_type is not None and isinstance(value, str):
        try:
            return field.enum_type.values_by_name[value].number
        except KeyError:
            raise ValueError('%r is not a value of enum %s (field %s); valid: %s'
                             % (value, field.enum_type.full_name, field.full_name,
                                ', '.join(field.enum_type.values_by_name)))
    return value


def assign_proto(proto, name, val):
    """Assign ``val`` to field ``name`` of ``proto`` with net_spec's rules (see module doc)."""
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise AttributeError('%s has no field %r' % (proto.DESCRIPTOR.full_name, name))
    if _is_repeated(field):
        listlike = isinstance(val, (list, tuple)) or getattr(val, 'ndim', 0) > 0
        values = list(val) if listlike else [val]
        container = getattr(proto, name)
        if field.message_type is not None:
            for item in values:
                _fill_message(container.add(), item, field)
        else:
            container.extend(_scalar(field, v) for v in values)
    elif field.message_type is not None:
        _fill_message(getattr(proto, name), val, field)
    else:
        setattr(proto, name, _scalar(field, val))


def _fill_message(message, val, field):
    if isinstance(val, dict):
        for k, v in val.items():
            assign_proto(message, k, v)
    elif isinstance(val, message.__class__):
        message.CopyFrom(val)
    else:
        raise TypeError('field %s is a %s message: give a dict (or a list of dicts for a '
                        'repeated field), not %r'
                        % (field.full_name, field.message_type.name, val))


class Top(object):
    """One output of a Function (a blob in the generated net)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with this top and everything it depends on (automatic names)."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function(object):
    """One layer: its type, its input Tops and its keyword parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, top in enumerate(inputs):
            if not isinstance(top, Top):
                raise TypeError('%s input %d is not a Top (type is %s)'
                                % (type_name, index, type(top)))
        self.inputs = inputs
        self.params = params
        # ntop / in_place steer the graph, they are not layer parameters.
        self.ntop = self.params.pop('ntop', 1)
        self.in_place = self.params.pop('in_place', False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for k, v in self.params.items():
            _assign_layer_param(layer, self.type_name, k, v)
        layers[self] = layer


def _assign_layer_param(layer, type_name, key, value):
    """Route keyword ``key`` to the layer's own message or to LayerParameter (module doc)."""
    if not key.endswith('param') and type_name in _param_names:
        specific = getattr(layer, _param_names[type_name] + '_param')
        if _has_field(specific, key):
            assign_proto(specific, key, value)
            return
    if not _has_field(layer, key):
        where = 'LayerParameter'
        if not key.endswith('param') and type_name in _param_names:
            where = '%sParameter nor LayerParameter' % type_name
        raise AttributeError('L.%s(%s=...): %r is not a field of %s'
                             % (type_name, key, key, where))
    assign_proto(layer, key, value)


class NetSpec(object):
    """Named tops of a net under construction; ``to_proto()`` gives the NetParameter.

    Assign tops as attributes or items (``n.conv1 = ...``, ``n['conv1'] = ...``); the
    attribute name becomes the blob name and, for a layer's first top, the layer name.
    """

    def __init__(self):
        super(NetSpec, self).__setattr__('tops', collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError('NetSpec has no top named %r' % name)

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def update(self, name, value):
        self.__setattr__(name, value)

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = collections.Counter()
        layers = collections.OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops):
    """A NetParameter holding ``tops`` and everything they depend on, auto-named."""
    layers = collections.OrderedDict()
    autonames = collections.Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers(object):
    """``L.<Type>(*bottoms, **params)``: a Top (ntop=1), a tuple of Tops, or the Function
    itself (ntop=0)."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


class Parameters(object):
    """``P.<Name>.<CONST>`` is ``caffe_pb2.<Name>Parameter.<CONST>`` (``P.Pooling.MAX``)."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + 'Parameter')

        class Param(object):
            def __getattr__(self, param_name):
                return getattr(message, param_name)
        return Param()


layers = Layers()
params = Parameters()
