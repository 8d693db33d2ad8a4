"""pytest wiring for the real-engine harness in ``tests/host.py`` (no mocks: the PyPI ComfyUI fork runs the nodes).

Fixtures (session-scoped unless noted):
  ``host``          the ``host`` module after the engine started (``host.run_workflow``, ``host.node_class``, ...)
  ``engine``        ``host.Engine``: base_dir, nodes, import_log, import_failures
  ``run_workflow``  ``host.run_workflow`` (a fresh executor per call)
  ``session``       (function scope) a ``host.Session``: one executor kept across runs, to test the host's cache
  ``tiny_model``    ``host.tiny_model(kind="eps", seed=0, channels=4, inference_mode=False)``
"""
import os
import sys

# Before torch is imported anywhere: with two busy cores a tiny workflow takes 200x longer multi-threaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

import pytest  # noqa: E402

import host as _host  # noqa: E402


class _PackRootIsNotATestPackage:
    """The repo root is the pack itself: its ``__init__.py`` (relative imports) is what ComfyUI imports from
    ``custom_nodes/``. pytest 8 collects from the rootdir down and would import that ``__init__.py`` as a test package:
    as ``main`` when the checkout is named like an identifier (a second copy of the pack, loaded outside the host), and
    failing ("attempted relative import with no known parent package") when it is not, e.g. ``comfyui-inversion``.
    Collect the root as a plain directory instead. (A conftest hook would not reach the root: registered globally.)"""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == _host.PACK_ROOT and (path / "__init__.py").is_file():
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(_PackRootIsNotATestPackage(), "inversion-pack-root-is-not-a-test-package")


def pytest_sessionstart(session):
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    # Start the host before any test module imports comfy: the fork fixes its base directory (and so custom_nodes/)
    # when comfy.cmd.folder_paths is first imported.
    _host.engine()


@pytest.fixture(scope="session")
def host():
    _host.engine()
    return _host


@pytest.fixture(scope="session")
def engine():
    return _host.engine()


@pytest.fixture(scope="session")
def run_workflow(host):
    return host.run_workflow


@pytest.fixture
def session(host):
    return host.Session()


@pytest.fixture(scope="session")
def tiny_model(host):
    return host.tiny_model
