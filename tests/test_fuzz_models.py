"""Seeded fuzzing of model loading (see fuzz_models.py): a few hundred mutated copies of the
shared LeNet files, V2 and V1 (prototxt, caffemodel, solverstate), each loaded as a user
would, must load or fail with a one-line QcaffeError, never with another exception.

The campaign runs in a child process with a limited address space, so a mutated dimension
that asks for gigabytes fails at once (and must be reported as a QcaffeError too).
"""
import json
import os
import subprocess
import sys

import pytest

from shared_data import require_shared

HERE = os.path.dirname(os.path.abspath(__file__))
MUTATIONS = 300
SEED = 2


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='uses RLIMIT_AS and SIGALRM')
def test_mutated_lenet_files_fail_only_with_one_line_qcaffe_errors():
    for version in ('lenet', 'lenet_v1'):
        for name in ('lenet.prototxt', 'lenet_iter_10000.caffemodel',
                     'lenet_iter_10000.solverstate'):
            require_shared('models', version, name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), QCAFFE_NUM_THREADS='1')
    done = subprocess.run([sys.executable, os.path.join(HERE, 'fuzz_models.py'),
                           '--mutations', str(MUTATIONS), '--seed', str(SEED), '--json'],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outcomes = result['outcomes']
    assert sum(outcomes.values()) == MUTATIONS
    others = {k: v for k, v in outcomes.items() if k not in ('loaded', 'QcaffeError')}
    assert not others, json.dumps(result['failures'], indent=1)
    assert result['multiline_count'] == 0, '\n'.join(result['multiline'])
    # the mutations are not all harmless (nor all fatal): both outcomes occur
    assert outcomes['loaded'] > 0 and outcomes['QcaffeError'] > MUTATIONS // 2
