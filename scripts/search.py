"""``marco-jax-search``: see :mod:`marco_jax.commands.search` (``--help``)."""

from marco_jax.commands.search import cli

if __name__ == "__main__":
    cli()
