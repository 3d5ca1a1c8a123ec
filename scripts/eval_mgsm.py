"""``marco-jax-eval-mgsm``: see :mod:`marco_jax.commands.eval_mgsm` (``--help``)."""

from marco_jax.commands.eval_mgsm import cli

if __name__ == "__main__":
    cli()
