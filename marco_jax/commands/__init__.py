"""The command-line tools, one module each: installed as ``marco-jax-<name>`` console
commands and run as ``python scripts/<name>.py`` (a wrapper of the module)."""
