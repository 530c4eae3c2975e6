"""The public face: every exported name resolves, and importing the package is cheap."""

import subprocess
import sys

import tov_datasets
import tov_kernels


def test_exports_resolve():
    for name in tov_datasets.__all__:
        assert getattr(tov_datasets, name) is not None
    assert callable(tov_kernels.paired_logprob_delta)
    assert callable(tov_kernels.paired_linear_logprob_delta)


def test_bare_import_does_not_load_torch():
    code = "import sys, tov_datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
