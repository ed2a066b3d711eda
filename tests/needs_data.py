"""The one check for tests that train on Fashion-MNIST (Debian's dataset-fashion-mnist, or the folder
HIRL_FASHION_MNIST names): skipped without the files, but HIRL_REQUIRE_DATA=1 (CI) makes their absence a
failure, as HIRL_REQUIRE_ENGINE does for the container tests. Mark a test ``@pytest.mark.fashion_mnist``
(tests/conftest.py applies it), or call ``fashion_mnist_or_skip()`` from a fixture."""

import os

import pytest

from hirl_core.data.fashion_mnist import default_root, missing_files


def fashion_mnist_or_skip():
    """The folder holding the four idx files; skips (or, when required, fails) the test without them."""
    root = default_root()
    missing = missing_files(root)
    if not missing:
        return root
    why = (f"needs Fashion-MNIST in {root} (missing {', '.join(missing)}): apt-get install dataset-fashion-mnist "
           f"(make test installs it), or set HIRL_FASHION_MNIST to a folder with the idx files")
    if os.environ.get("HIRL_REQUIRE_DATA") == "1":
        pytest.fail(f"HIRL_REQUIRE_DATA=1 but the test {why}", pytrace=False)
    pytest.skip(why)
