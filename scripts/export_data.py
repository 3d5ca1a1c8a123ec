"""``marco-jax-export-data``: see :mod:`marco_jax.commands.export_data` (``--help``)."""

from marco_jax.commands.export_data import cli

if __name__ == "__main__":
    cli()
