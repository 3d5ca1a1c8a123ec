"""``marco-jax-convert``: see :mod:`marco_jax.commands.convert` (``--help``)."""

from marco_jax.commands.convert import cli

if __name__ == "__main__":
    cli()
