"""Data and log tools: convert_mnist_data, convert_imageset, compute_image_mean, parse_log,
plot_training_log and the upgrade_* tools, run through their command-line entry points."""
import gzip
import os

import numpy as np
import pytest

from qcaffe.cli import main as cli
from qcaffe.data.lmdb_io import parse_datum, read_lmdb
from qcaffe.io import read_mean_binaryproto, read_binary_proto, read_prototxt
from qcaffe.proto import caffe_pb2
from qcaffe.tools import normalize_flags, ToolError
from qcaffe.tools.convert_mnist_data import read_mnist
from qcaffe.tools.parse_log import parse_log
from shared_data import require_shared


def mnist_file(name):
    return require_shared('mnist', name)


def idx_array(path, offset):
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


# ------------------------------------------------------------------ convert_mnist_data
@pytest.fixture(scope='module')
def t10k_lmdb(tmp_path_factory):
    db = str(tmp_path_factory.mktemp('mnist') / 'mnist_test_lmdb')
    assert cli(['convert_mnist_data', mnist_file('t10k-images-idx3-ubyte.gz'),
                mnist_file('t10k-labels-idx1-ubyte.gz'), db, '--backend=lmdb']) == 0
    return db


def test_convert_mnist_data_matches_caffe_format(t10k_lmdb):
    records = read_lmdb(t10k_lmdb)
    assert len(records) == 10000
    assert records[0][0] == b'00000000' and records[-1][0] == b'00009999'
    images = idx_array(mnist_file('t10k-images-idx3-ubyte.gz'), 16).reshape(-1, 28, 28)
    labels = idx_array(mnist_file('t10k-labels-idx1-ubyte.gz'), 8)
    for i in (0, 1, 4321, 9999):
        key, value = records[i]
        # Byte for byte what Caffe's convert_mnist_data (protobuf) serializes.
        expect = caffe_pb2.Datum(channels=1, height=28, width=28, data=images[i].tobytes(),
                                 label=int(labels[i])).SerializeToString()
        assert value == expect
    assert [parse_datum(v).label for _, v in records[:10]] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    d = parse_datum(records[0][1])
    assert not d.encoded and len(d.float_data) == 0


def test_read_mnist_raw_and_gzip_agree(tmp_path):
    raw = tmp_path / 'labels'
    raw.write_bytes(gzip.open(mnist_file('t10k-labels-idx1-ubyte.gz')).read())
    imgs, labs = read_mnist(mnist_file('t10k-images-idx3-ubyte.gz'), str(raw))
    assert imgs.shape == (10000, 28, 28) and labs.shape == (10000,)
    assert list(labs[:3]) == [7, 2, 1]


def test_convert_mnist_data_errors(tmp_path, capsys):
    labels = mnist_file('t10k-labels-idx1-ubyte.gz')
    images = mnist_file('t10k-images-idx3-ubyte.gz')
    # swapped files: wrong magic number, named in the message
    assert cli(['convert_mnist_data', labels, images, str(tmp_path / 'db')]) == 1
    err = capsys.readouterr().err
    assert 'magic number 2049, expected 2051' in err and 'Traceback' not in err
    # counts differ: train labels with test images
    assert cli(['convert_mnist_data', images, mnist_file('train-labels-idx1-ubyte.gz'),
                str(tmp_path / 'db')]) == 1
    assert 'has 10000 items but label file' in capsys.readouterr().err
    # truncated image file
    short = tmp_path / 'short-images'
    short.write_bytes(gzip.open(images).read()[:5000])
    assert cli(['convert_mnist_data', str(short), labels, str(tmp_path / 'db')]) == 1
    assert 'truncated' in capsys.readouterr().err
    # missing file, existing DB
    assert cli(['convert_mnist_data', str(tmp_path / 'nope'), labels, str(tmp_path / 'db')]) == 1
    assert 'does not exist' in capsys.readouterr().err
    (tmp_path / 'exists').mkdir()
    assert cli(['convert_mnist_data', images, labels, str(tmp_path / 'exists')]) == 1
    assert 'already exists' in capsys.readouterr().err
    assert cli(['convert_mnist_data', images, labels, str(tmp_path / 'x'), '-backend',
                'leveldb']) == 1
    assert 'leveldb' in capsys.readouterr().err


# ------------------------------------------------------------------ compute_image_mean
def test_compute_image_mean(t10k_lmdb, tmp_path, capsys):
    out = str(tmp_path / 'mean.binaryproto')
    assert cli(['compute_image_mean', '-backend', 'lmdb', t10k_lmdb, out]) == 0
    blob = read_binary_proto(out, caffe_pb2.BlobProto())
    # Caffe's format: legacy dims, no shape
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 28, 28)
    assert not blob.HasField('shape')
    mean = read_mean_binaryproto(out)
    images = idx_array(mnist_file('t10k-images-idx3-ubyte.gz'), 16).reshape(-1, 28, 28)
    np.testing.assert_allclose(mean[0, 0], images.mean(axis=0), rtol=0, atol=1e-4)
    err = capsys.readouterr().err
    assert 'Processed 10000 files.' in err and 'mean_value channel [0]: 33.79' in err


def test_compute_image_mean_missing_db(tmp_path, capsys):
    assert cli(['compute_image_mean', str(tmp_path / 'nodb')]) == 1
    err = capsys.readouterr().err
    assert 'does not exist' in err and 'Traceback' not in err


# ------------------------------------------------------------------ convert_imageset
@pytest.fixture
def image_folder(tmp_path):
    Image = pytest.importorskip('PIL.Image')
    rng = np.random.default_rng(0)
    root = tmp_path / 'imgs'
    (root / 'sub').mkdir(parents=True)
    arrays = {}
    for i, name in enumerate(['a.png', 'sub/b c.png', 'd.png']):
        rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(str(root / name))
        arrays[name] = rgb
    listfile = tmp_path / 'list.txt'
    listfile.write_text('a.png 3\nsub/b c.png 1\nmissing.png 2\n\nd.png 7\n')
    return str(root) + '/', str(listfile), arrays


def test_convert_imageset_raw_bgr(image_folder, tmp_path, capsys):
    root, listfile, arrays = image_folder
    db = str(tmp_path / 'db')
    assert cli(['convert_imageset', root, listfile, db, '--check_size=true']) == 0
    records = read_lmdb(db)
    # missing.png is skipped (logged); keys keep the entry index of the list (blank lines
    # are not entries)
    assert [k for k, _ in records] == [b'00000000_a.png', b'00000001_sub/b c.png',
                                       b'00000003_d.png']
    assert 'missing.png' in capsys.readouterr().err
    d = parse_datum(records[1][1])
    assert (d.channels, d.height, d.width, d.label) == (3, 6, 7, 1)
    pixels = np.frombuffer(d.data, np.uint8).reshape(3, 6, 7)
    np.testing.assert_array_equal(pixels, arrays['sub/b c.png'][:, :, ::-1].transpose(2, 0, 1))


def test_convert_imageset_gray_resize_encoded(image_folder, tmp_path):
    root, listfile, arrays = image_folder
    db = str(tmp_path / 'gray')
    assert cli(['convert_imageset', '-gray', '-resize_width', '4', '-resize_height=3', root,
                listfile, db]) == 0
    d = parse_datum(read_lmdb(db)[0][1])
    assert (d.channels, d.height, d.width) == (1, 3, 4)
    enc = str(tmp_path / 'enc')
    assert cli(['convert_imageset', '--encoded', '--shuffle', root, listfile, enc]) == 0
    records = read_lmdb(enc)
    assert len(records) == 3
    for key, value in records:
        d = parse_datum(value)
        name = key.decode().split('_', 1)[1]
        assert d.encoded
        # no resize, same format: the file bytes unchanged
        with open(os.path.join(root, name), 'rb') as f:
            assert d.data == f.read()
    # the mean of an encoded DB decodes the images
    assert cli(['compute_image_mean', enc, str(tmp_path / 'm.binaryproto')]) == 0
    mean = read_mean_binaryproto(str(tmp_path / 'm.binaryproto'))
    expect = np.mean([a[:, :, ::-1].transpose(2, 0, 1) for a in arrays.values()], axis=0)
    np.testing.assert_allclose(mean[0], expect, atol=1e-4)


def test_convert_imageset_bad_list(tmp_path, capsys):
    bad = tmp_path / 'list.txt'
    bad.write_text('a.png\n')
    assert cli(['convert_imageset', str(tmp_path), str(bad), str(tmp_path / 'db')]) == 1
    err = capsys.readouterr().err
    assert 'list.txt:1' in err and 'Traceback' not in err


# ------------------------------------------------------------------ parse_log / plot
CAFFE_LOG = """\
I1129 10:00:00.000000 12345 caffe.cpp:218] Using GPUs 0
I1129 10:00:01.000000 12345 solver.cpp:44] Initializing solver from parameters:
test_iter: 100
I1129 10:00:02.000000 12345 solver.cpp:326] Solving LeNet
I1129 10:00:02.000000 12345 solver.cpp:327] Learning Rate Policy: inv
I1129 10:00:02.100000 12345 solver.cpp:384] Iteration 0, Testing net (#0)
I1129 10:00:03.000000 12345 solver.cpp:453]     Test net output #0: accuracy = 0.0856
I1129 10:00:03.000000 12345 solver.cpp:453]     Test net output #1: loss = 2.30855 (* 1 = 2.30855 loss)
I1129 10:00:03.100000 12345 solver.cpp:218] Iteration 0 (0 iter/s, 1.1s/100 iters), loss = 2.32
I1129 10:00:03.100000 12345 solver.cpp:237]     Train net output #0: loss = 2.32 (* 1 = 2.32 loss)
I1129 10:00:03.100000 12345 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I1129 10:00:04.100000 12345 solver.cpp:218] Iteration 100 (100 iter/s, 1s/100 iters), loss = 0.21
I1129 10:00:04.100000 12345 solver.cpp:237]     Train net output #0: loss = 0.21 (* 1 = 0.21 loss)
I1129 10:00:04.100000 12345 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I1129 10:00:05.100000 12345 solver.cpp:384] Iteration 200, Testing net (#0)
I1129 10:00:06.100000 12345 solver.cpp:453]     Test net output #0: accuracy = 0.9785
I1129 10:00:06.100000 12345 solver.cpp:453]     Test net output #1: loss = 0.0606671 (* 1 = 0.0606671 loss)
I1129 10:00:06.200000 12345 solver.cpp:218] Iteration 200 (100 iter/s, 1s/100 iters), loss = 0.11
I1129 10:00:06.200000 12345 solver.cpp:237]     Train net output #0: loss = 0.11 (* 1 = 0.11 loss)
I1129 10:00:06.200000 12345 sgd_solver.cpp:105] Iteration 200, lr = 0.00985258
I1129 10:00:07.000000 12345 solver.cpp:464] Snapshotting to binary proto file lenet_iter_200.caffemodel
I1129 10:00:07.500000 12345 solver.cpp:384] Iteration 200, Testing net (#0)
I1129 10:00:08.000000 12345 solver.cpp:453]     Test net output #0: accuracy = 0.9801
I1129 10:00:08.000000 12345 solver.cpp:453]     Test net output #1: loss = 0.055 (* 1 = 0.055 loss)
I1129 10:00:08.000000 12345 solver.cpp:404] Optimization Done.
"""


def test_parse_log_caffe_format(tmp_path):
    log = tmp_path / 'caffe.log'
    log.write_text(CAFFE_LOG)
    assert cli(['parse_log', str(log), str(tmp_path), '--delimiter=,']) == 0
    train = (tmp_path / 'caffe.log.train').read_text().splitlines()
    test = (tmp_path / 'caffe.log.test').read_text().splitlines()
    assert train[0] == 'NumIters,Seconds,LearningRate,loss'
    # Caffe's script pairs each output with the lr logged BEFORE it (the lr line follows the
    # train outputs), and copies the second row's lr into the first.
    assert train[1:] == ['0.0,1.1,0.01,2.32', '100.0,2.1,0.01,0.21',
                         '200.0,4.2,0.00992565,0.11']
    assert test[0] == 'NumIters,Seconds,LearningRate,accuracy,loss'
    # the first lr (NaN when the test ran) is copied from the second row, as Caffe's script does
    assert test[1] == '0.0,1.0,0.00992565,0.0856,2.30855'
    assert test[2] == '200.0,4.1,0.00992565,0.9785,0.0606671'
    assert test[3].startswith('200.0,6.0,') and test[3].endswith(',0.9801,0.055')
    train_rows, test_rows = parse_log(str(log))
    assert len(train_rows) == 3 and len(test_rows) == 3


def test_parse_log_errors(tmp_path, capsys):
    log = tmp_path / 'x.log'
    log.write_text('not a training log\n')
    assert cli(['parse_log', str(log), str(tmp_path)]) == 1
    assert "no glog line containing 'Solving'" in capsys.readouterr().err
    assert cli(['parse_log', str(tmp_path / 'none.log'), str(tmp_path)]) == 1
    assert 'does not exist' in capsys.readouterr().err


@pytest.mark.parametrize('chart', range(8))
def test_plot_training_log(tmp_path, chart):
    pytest.importorskip('matplotlib')
    logs = []
    for name in ('a.log', 'b.log'):
        (tmp_path / name).write_text(CAFFE_LOG)
        logs.append(str(tmp_path / name))
    png = tmp_path / 'chart.png'
    assert cli(['plot_training_log', str(chart), str(png)] + logs) == 0
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    from qcaffe.tools.plot_training_log import chart_data, parse_series
    x, y, _, _ = chart_data(parse_series(logs[0]), chart)
    # Caffe's numbering: test accuracy, test loss, train lr, train loss; each against
    # iterations (even) and seconds (odd)
    expect_y = {0: [0.0856, 0.9785, 0.9801], 2: [2.30855, 0.0606671, 0.055],
                4: [0.01, 0.00992565, 0.00985258], 6: [2.32, 0.21, 0.11]}
    assert y == expect_y[chart - chart % 2]
    x_expect = {(0, 0): [0, 200, 200], (0, 1): [0.1, 3.1, 5.5],  # (test?, seconds?)
                (1, 0): [0, 100, 200], (1, 1): [1.1, 2.1, 4.2]}
    assert x == pytest.approx(x_expect[(int(chart >= 4), chart % 2)])


def test_plot_training_log_errors(tmp_path, capsys):
    (tmp_path / 'a.txt').write_text(CAFFE_LOG)
    assert cli(['plot_training_log', '9', str(tmp_path / 'c.png'), str(tmp_path / 'a.txt')]) == 1
    assert 'not a valid chart type' in capsys.readouterr().err
    assert cli(['plot_training_log', '0', str(tmp_path / 'c.png'), str(tmp_path / 'a.txt')]) == 1
    assert 'must end in .log' in capsys.readouterr().err


# ------------------------------------------------------------------ upgrade tools
def test_upgrade_net_proto_text_v1(tmp_path, capsys):
    src = require_shared('models', 'lenet_v1', 'lenet_train_test.prototxt')
    out = str(tmp_path / 'up.prototxt')
    assert cli(['upgrade_net_proto_text', src, out]) == 0
    net = read_prototxt(out, caffe_pb2.NetParameter())
    assert len(net.layers) == 0
    assert [l.type for l in net.layer][:4] == ['Data', 'Data', 'Convolution', 'Pooling']
    conv = net.layer[2]
    assert [p.lr_mult for p in conv.param] == [1, 2]
    # already current: says so, still writes the output
    assert cli(['upgrade_net_proto_text', out, str(tmp_path / 'again.prototxt')]) == 0
    assert 'already in latest proto format' in capsys.readouterr().err
    assert os.path.exists(str(tmp_path / 'again.prototxt'))


def test_upgrade_net_proto_binary_v1(tmp_path):
    src = require_shared('models', 'lenet_v1', 'lenet_iter_10000.caffemodel')
    out = str(tmp_path / 'up.caffemodel')
    assert cli(['upgrade_net_proto_binary', src, out]) == 0
    net = read_binary_proto(out, caffe_pb2.NetParameter())
    ip2 = [l for l in net.layer if l.name == 'ip2'][0]
    assert ip2.type == 'InnerProduct' and len(ip2.blobs) == 2


def test_upgrade_solver_proto_text(tmp_path):
    old = tmp_path / 'old_solver.prototxt'
    old.write_text('net: "x.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nsolver_type: NESTEROV\n')
    out = str(tmp_path / 'new.prototxt')
    assert cli(['upgrade_solver_proto_text', str(old), out]) == 0
    solver = read_prototxt(out, caffe_pb2.SolverParameter())
    assert solver.type == 'Nesterov' and not solver.HasField('solver_type')


# ------------------------------------------------------------------ flag spellings
def test_normalize_flags():
    assert normalize_flags(['-solver', 'x', '--gpu=0', '-iterations=5', '-1', 'pos']) == \
        ['--solver', 'x', '--gpu=0', '--iterations=5', '-1', 'pos']
    assert normalize_flags(['-shuffle=false', '--gray=true', '--', '-x'], {'shuffle', 'gray'}) \
        == ['--noshuffle', '--gray', '--', '-x']
    with pytest.raises(ToolError, match='boolean'):
        normalize_flags(['--gray=maybe'], {'gray'})


def test_compute_image_mean_on_mixed_sizes_names_the_record(tmp_path, capsys):
    from qcaffe.data.lmdb_io import datum_bytes, key_for, write_lmdb
    db = str(tmp_path / 'mixed')
    write_lmdb(db, [(key_for(i), datum_bytes(np.zeros((1, 9 if i == 3 else 8, 8), np.uint8)))
                    for i in range(5)])
    assert cli(['compute_image_mean', db]) == 1
    err = capsys.readouterr().err
    line, = [l for l in err.splitlines() if ': error: ' in l]
    assert line == ("qcaffe compute_image_mean: error: LMDB '%s', record 3 (key '00000003') "
                    "has shape (1, 9, 8) but LMDB '%s', record 0 (key '00000000') has "
                    "(1, 8, 8); compute_image_mean needs images of one size (convert them with "
                    "convert_imageset --resize_height and --resize_width)" % (db, db))
    assert 'batch_size' not in err
