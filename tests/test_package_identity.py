"""``supervisor`` is also supervisord's import name on PyPI: make sure it is ours."""

import supervisor
import workers


def test_imported_supervisor_package_is_taskd():
    assert getattr(supervisor, "TASKD_PACKAGE", False) is True
    assert hasattr(supervisor, "__version__")
    # supervisord's package has these modules; ours never does.
    import importlib.util

    assert importlib.util.find_spec("supervisor.supervisord") is None
    assert workers.__file__.rsplit("/", 2)[0] == supervisor.__file__.rsplit("/", 2)[0]
