"""``marco-jax-show-tree``: see :mod:`marco_jax.commands.show_tree` (``--help``)."""

from marco_jax.commands.show_tree import cli

if __name__ == "__main__":
    cli()
