"""The opt-in ``import caffe`` shim (qcaffe.compat), always exercised in a subprocess so the
test process's own ``sys.modules`` never sees a ``caffe`` alias."""
import os
import subprocess
import sys

import qcaffe.compat

PROBE = r'''
import caffe, qcaffe
from caffe.proto import caffe_pb2
import caffe.proto.caffe_pb2 as p2
import qcaffe.proto.caffe_pb2 as q2
from caffe import layers as L, params as P
import caffe.io
assert caffe is qcaffe
assert p2 is q2 and caffe_pb2 is q2
assert caffe.io is qcaffe.io and caffe.io.Transformer is qcaffe.io.Transformer
assert caffe.Net is qcaffe.pycaffe.Net and caffe.TRAIN == 0 and caffe.TEST == 1
assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
n = caffe.NetSpec()
n.data = L.DummyData(shape=dict(dim=[1, 2]))
assert 'DummyData' in str(n.to_proto())
print('OK')
'''


def _run(code, env_extra=None, cwd=None):
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, cwd=cwd or '/', timeout=120)


def test_not_active_by_default():
    r = _run('import qcaffe\nimport caffe')
    assert r.returncode != 0 and "No module named 'caffe'" in r.stderr


def test_pythonpath_shim():
    r = _run(PROBE, {'PYTHONPATH': qcaffe.compat.shim_path()})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'OK'


def test_path_command_prints_shim_folder():
    r = subprocess.run([sys.executable, '-m', 'qcaffe.compat', 'path'], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    assert path == qcaffe.compat.shim_path()
    assert os.path.isfile(os.path.join(path, 'caffe', '__init__.py'))


def test_install_pth_and_uninstall(tmp_path):
    site_dir = str(tmp_path)
    r = subprocess.run([sys.executable, '-m', 'qcaffe.compat', 'install', '--dir', site_dir],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pth = tmp_path / qcaffe.compat.PTH_NAME
    assert pth.read_text().strip() == qcaffe.compat.shim_path()
    # a site directory's .pth files are processed by site.addsitedir, as at startup
    r = _run('import site; site.addsitedir(%r)\n' % site_dir + PROBE)
    assert r.returncode == 0, r.stderr
    assert qcaffe.compat.uninstall(directory=site_dir) == str(pth)
    assert not pth.exists()
    assert qcaffe.compat.uninstall(directory=site_dir) is None
