"""``marco-jax-train``: see :mod:`marco_jax.commands.train` (``--help``)."""

from marco_jax.commands.train import cli

if __name__ == "__main__":
    cli()
