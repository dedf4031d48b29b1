"""The command lines: each module holds one ``main(argv)`` (``[project.scripts]`` and ``python -m`` point here)."""
