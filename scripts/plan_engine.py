"""``marco-jax-plan-engine``: see :mod:`marco_jax.commands.plan_engine` (``--help``)."""

from marco_jax.commands.plan_engine import cli

if __name__ == "__main__":
    cli()
