"""The schema: generated module fresh, every BVLC field number/default, our extensions."""
import importlib.util
import os
import re

import pytest

from qcaffe.proto import caffe_pb2, regenerate

from shared_data import require_shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_module_matches_schema_hash():
    with open(os.path.join(ROOT, 'qcaffe', 'proto', 'caffe_pb2.py')) as f:
        first = f.readline()
    recorded = first.split(':', 1)[1].strip()
    assert recorded == regenerate.schema_sha256(), (
        'qcaffe/proto/caffe_pb2.py is stale: run `python -m qcaffe.proto.regenerate`')


@pytest.mark.skipif(importlib.util.find_spec('grpc_tools') is None,
                    reason='grpcio-tools not installed (needed only to regenerate)')
def test_generated_module_is_what_protoc_makes():
    with open(os.path.join(ROOT, 'qcaffe', 'proto', 'caffe_pb2.py')) as f:
        assert f.read() == regenerate.generate()


def _appendix_b():
    """(message, field, number, label, type, default) rows of caffe.md Appendix B."""
    path = require_shared('..', 'spec', 'caffe.md')
    text = open(path).read()
    text = text[text.index('## Appendix B.'):]
    rows = []
    for block in re.split(r'\n### B\. ', text)[1:]:
        msg = block.split('\n', 1)[0].strip()
        for m in re.finditer(r'^\| (\w+) \| (\d+) \| (optional|repeated) (\w+) \|(.*)\|\s*$',
                             block, re.M):
            rows.append((msg, m.group(1), int(m.group(2)), m.group(3), m.group(4),
                         m.group(5).replace('(packed)', '').strip()))
    return rows


def test_every_bvlc_field_number_and_default():
    rows = _appendix_b()
    assert len(rows) > 400
    for msg, field, number, label, typ, default in rows:
        desc = getattr(caffe_pb2, msg).DESCRIPTOR
        fd = desc.fields_by_name[field]
        assert fd.number == number, (msg, field)
        assert fd.is_repeated == (label == 'repeated'), (msg, field)
        if default:
            val = fd.default_value
            if fd.enum_type is not None:
                val = fd.enum_type.values_by_number[val].name
                assert val == default, (msg, field)
            elif isinstance(val, bool):
                assert val == (default == 'true'), (msg, field)
            elif isinstance(val, str):
                assert val == default.strip('"\''), (msg, field)
            else:
                assert abs(val - float(default)) <= 1e-6 * max(1.0, abs(val)), (msg, field)


def test_extensions_numbering():
    lp = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    expect = {'weights_compress': 149, 'activations_compress': 150,
              'weights_compress_param': 151, 'activations_compress_param': 152,
              'dns_convolution_param': 153, 'dns_inner_product_param': 154,
              'inq_convolution_param': 155, 'inq_inner_product_param': 156,
              'cconvolution_param': 157, 'cinner_product_param': 158}
    for name, num in expect.items():
        assert lp[name].number == num
    bp = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name
    for name, num in [('ternary', 10), ('double_ternary', 11), ('delta', 12), ('alpha', 13),
                      ('quantize', 14), ('double_quantize', 15), ('fixedpos', 16),
                      ('maxbits', 17)]:
        assert bp[name].number == num
    assert caffe_pb2.BlobProto().maxbits == 8 and caffe_pb2.BlobProto().alpha == 1
    sp = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    for name, num in [('rampup_interval', 100), ('rampup_lr', 101), ('min_lr', 102),
                      ('local_gw_ratio', 103)]:
        assert sp[name].number == num
    cp = caffe_pb2.CompressParameter()
    assert (cp.delta, cp.alpha, cp.fixedpos, cp.maxbits) == (0, 0, 0, 8)
    assert caffe_pb2.SolverParameter.LARSSGD == 6
