"""Root conftest of the project's own test suite.

The plugin is deliberately not loaded here: the inner pytest runs of the tests
(pytester) enable it with ``-p pytest_agenttask``, exactly as users do.
"""

pytest_plugins = ["pytester"]
