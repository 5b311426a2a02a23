"""pytest plugins for the test suite, registered from tests/conftest.py."""
