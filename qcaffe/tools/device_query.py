"""``qcaffe device_query [--gpu ids|all]``.

Caffe equivalent: ``caffe device_query`` (tools/caffe.cpp, ``Caffe::DeviceQuery``), which
prints the CUDA properties of each device given with -gpu.  qcaffe also runs on the CPU, so
it first reports the CPU side (cores, Python, numpy and its BLAS), then the properties of the
GPUs named by --gpu, or of every visible GPU when --gpu is not given and cupy is installed.
"""
import logging
import os
import platform

import numpy as np

from . import ArgumentParser, ToolError, parse_gpu_ids, run_main

log = logging.getLogger('qcaffe')

# (label, cudaDeviceProp key) in Caffe::DeviceQuery's order and wording.
_PROPERTIES = (
    ('Major revision number:         ', 'major'),
    ('Minor revision number:         ', 'minor'),
    ('Name:                          ', 'name'),
    ('Total global memory:           ', 'totalGlobalMem'),
    ('Total shared memory per block: ', 'sharedMemPerBlock'),
    ('Total registers per block:     ', 'regsPerBlock'),
    ('Warp size:                     ', 'warpSize'),
    ('Maximum memory pitch:          ', 'memPitch'),
    ('Maximum threads per block:     ', 'maxThreadsPerBlock'),
    ('Maximum dimension of block:    ', 'maxThreadsDim'),
    ('Maximum dimension of grid:     ', 'maxGridSize'),
    ('Clock rate:                    ', 'clockRate'),
    ('Total constant memory:         ', 'totalConstMem'),
    ('Texture alignment:             ', 'textureAlignment'),
    ('Concurrent copy and execution: ', 'deviceOverlap'),
    ('Number of multiprocessors:     ', 'multiProcessorCount'),
    ('Kernel execution timeout:      ', 'kernelExecTimeoutEnabled'),
)
_YES_NO = ('deviceOverlap', 'kernelExecTimeoutEnabled')


def _blas_name():
    try:
        config = np.show_config(mode='dicts')
        blas = config.get('Build Dependencies', {}).get('blas', {})
        return '%s %s' % (blas.get('name', '?'), blas.get('version', ''))
    except Exception:  # older numpy: no machine-readable config
        return 'unknown'


def query_cpu():
    log.info('CPU: %s (%s), %d logical cores', platform.processor() or platform.machine(),
             platform.system(), os.cpu_count() or 0)
    if hasattr(os, 'sched_getaffinity'):
        log.info('Cores available to this process: %d', len(os.sched_getaffinity(0)))
    log.info('Python %s, numpy %s, BLAS: %s', platform.python_version(), np.__version__,
             _blas_name().strip())


def _format_property(key, value):
    if isinstance(value, bytes):
        return value.decode(errors='replace')
    if key in _YES_NO:
        return 'Yes' if value else 'No'
    if isinstance(value, (tuple, list)):
        return ', '.join(str(v) for v in value)
    return str(value)


def query_gpu(device_id):
    """Caffe: ``Caffe::DeviceQuery`` for one device."""
    from .. import backend
    props = backend.cupy_module().cuda.runtime.getDeviceProperties(device_id)
    log.info('Device id:                     %d', device_id)
    for label, key in _PROPERTIES:
        if key in props:
            log.info('%s%s', label, _format_property(key, props[key]))


def visible_gpus():
    """Every CUDA device, or [] when cupy or a device is missing."""
    try:
        from .. import backend
        return list(range(backend.cupy_module().cuda.runtime.getDeviceCount()))
    except Exception:
        return []


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Show CPU and GPU diagnostic information.')
    parser.add_flag('gpu', default='', help="GPU device ids to query, separated by ',', or "
                    "'all' (needs cupy). Default: every visible GPU, if any.")
    return parser


def run(args):
    query_cpu()
    if args.gpu:
        gpus = parse_gpu_ids(args.gpu)  # raises a clear error when cupy is missing
    else:
        gpus = visible_gpus()
        if not gpus:
            log.info('No GPU: cupy is not installed or no CUDA device is visible; qcaffe '
                     'runs on the CPU.')
    if gpus:
        log.info('Querying GPUs %s', args.gpu or ','.join(str(g) for g in gpus))
    if gpus:
        from .. import backend
        count = backend.cupy_module().cuda.runtime.getDeviceCount()  # clear error without cupy
    for g in gpus:
        if not 0 <= g < count:
            raise ToolError('--gpu %d: no such device (%d visible)' % (g, count))
        query_gpu(g)
    return 0


def main(argv=None, prog='device_query', command=None):
    return run_main(build_parser, run, argv, prog)
