"""Regenerate ``qcaffe/proto/caffe_pb2.py`` from ``proto/caffe.proto``.

Run ``python -m qcaffe.proto.regenerate`` after editing the schema (needs ``grpcio-tools``,
a development dependency only: users never need protoc).

protoc's output pins the exact protobuf runtime it was made with; we drop that pin so the
module imports on any protobuf >= 4.21, and record the schema's SHA-256 so that
``tests/test_proto.py`` can tell when the generated module is stale.
"""
import hashlib
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(ROOT, 'proto', 'caffe.proto')
TARGET = os.path.join(HERE, 'caffe_pb2.py')


def schema_sha256(path=PROTO):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def generate(proto_path=PROTO):
    """Return the text of caffe_pb2.py for ``proto_path``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.check_call([sys.executable, '-m', 'grpc_tools.protoc',
                               '-I' + os.path.dirname(proto_path),
                               '--python_out=' + tmp, os.path.basename(proto_path)])
        with open(os.path.join(tmp, 'caffe_pb2.py')) as f:
            text = f.read()
    # Drop the exact-runtime-version check protoc >= 26 emits.
    text = re.sub(r'from google\.protobuf import runtime_version as _runtime_version\n', '', text)
    text = re.sub(r'_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n', '', text)
    text = re.sub(r'# Protobuf Python Version: .*\n', '', text)
    header = '# schema-sha256: %s\n' % schema_sha256(proto_path)
    return header + text


def main():
    text = generate()
    with open(TARGET, 'w') as f:
        f.write(text)
    print('wrote', TARGET)


if __name__ == '__main__':
    main()
