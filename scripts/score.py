"""``marco-jax-score``: see :mod:`marco_jax.commands.score` (``--help``)."""

from marco_jax.commands.score import cli

if __name__ == "__main__":
    cli()
