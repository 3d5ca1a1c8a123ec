"""``marco-jax-serve``: see :mod:`marco_jax.commands.serve` (``--help``)."""

from marco_jax.commands.serve import cli

if __name__ == "__main__":
    cli()
