"""Views of a `Report`: text, log lines, the federation-tester view."""
