"""The ``asrctl`` command line: thin commands over the library."""
