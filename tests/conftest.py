"""Markers every test package shares."""

from .needs_data import fashion_mnist_or_skip


def pytest_configure(config):
    config.addinivalue_line("markers", "fashion_mnist: needs the Fashion-MNIST files (skipped without them; "
                                       "HIRL_REQUIRE_DATA=1 fails instead)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("fashion_mnist"):
        fashion_mnist_or_skip()
