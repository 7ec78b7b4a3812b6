"""The ``mallops`` command and the Python client of the mallops gateway."""
