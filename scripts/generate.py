"""``marco-jax-generate``: see :mod:`marco_jax.commands.generate` (``--help``)."""

from marco_jax.commands.generate import cli

if __name__ == "__main__":
    cli()
