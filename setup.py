"""qcaffe: Caffe reimplemented in Python, with model compression built in."""
from setuptools import find_packages, setup

setup(
    name='qcaffe',
    version='0.1.0',
    description='Caffe reimplemented in Python (numpy / cupy) with model compression built in',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['qcaffe', 'qcaffe.*']),
    package_data={'qcaffe.proto': ['*.proto']},
    python_requires='>=3.9',
    install_requires=['numpy>=1.22', 'protobuf>=5.26', 'lmdb>=1.0', 'threadpoolctl>=3.1'],
    extras_require={
        # mpi4py + an MPI (the mpich wheel) run the 2-rank training tests under mpiexec
        'test': ['pytest>=7', 'mpi4py', 'mpich'],
        # data-parallel training; on a cluster, mpi4py built against the cluster's MPI
        'mpi': ['mpi4py'],
        'hdf5': ['h5py'],
        'image': ['pillow'],
        'plot': ['matplotlib'],
        'gpu': ['cupy-cuda12x'],
        'draw': ['pydot'],
        'bench': ['torch'],
        'dev': ['pytest>=7', 'grpcio-tools', 'h5py', 'pillow', 'mpi4py', 'mpich'],
    },
    entry_points={'console_scripts': ['qcaffe=qcaffe.cli:main']},
)
